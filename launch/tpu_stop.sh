#!/usr/bin/env bash
# Stop a run on every TPU worker and, optionally, delete the slice.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_stop.sh --name=NAME --zone=ZONE [--run=RUN|--all_runs]
                          [--signal=TERM] [--grace_s=60] [--delete]

Sends SIGNAL to the process group recorded in <log_root>/<run>/worker-<i>.pid
on every worker (setsid made each run its own group), waits up to GRACE_S
seconds (trm_jax saves a checkpoint at a step all processes agree on, then
exits 0), then SIGKILLs what is left. --delete then deletes the queued
resource and its TPU VMs (`gcloud compute tpus queued-resources delete
--force`); with --delete alone (no --run) only the deletion happens.

Options:
  --run=RUN        run to stop (default: the latest run)
  --all_runs       stop every run that has a live pid file
  --signal=SIG     first signal (default TERM)
  --grace_s=S      seconds before SIGKILL (default 60)
  --delete         delete the queued resource / pod afterwards
  --no_stop        with --delete: skip stopping (e.g. the workers are gone)
USAGE
  common_usage
}

RUN_NAME="latest"
ALL_RUNS=0
SIGNAL="TERM"
GRACE_S=60
DELETE=0
NO_STOP=0

while [[ $# -gt 0 ]]; do
  if parse_common "$@"; then shift "$OPTSHIFT"; continue; fi
  case "$1" in
    --run|--run=*|--run_name|--run_name=*) take_value "$@"; RUN_NAME="$OPTVAL" ;;
    --all_runs) ALL_RUNS=1; OPTSHIFT=1 ;;
    --signal|--signal=*) take_value "$@"; SIGNAL="${OPTVAL#SIG}" ;;
    --grace_s|--grace_s=*) take_value "$@"; GRACE_S="$OPTVAL" ;;
    --delete) DELETE=1; OPTSHIFT=1 ;;
    --no_stop) NO_STOP=1; OPTSHIFT=1 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift "$OPTSHIFT"
done

require_tpu_flags
[[ "$SIGNAL" =~ ^[A-Z0-9]+$ ]] || die "bad --signal ${SIGNAL}"
[[ "$GRACE_S" =~ ^[0-9]+$ ]] || die "--grace_s must be a number"

RLOGS="$(remote_path "$LOG_ROOT")"
if [[ "$ALL_RUNS" == 1 ]]; then
  pidglob="${RLOGS}/*/worker-\$W.pid"
else
  pidglob="${RLOGS}/$(safe_name "$RUN_NAME")/worker-\$W.pid"
fi

if [[ "$NO_STOP" == 0 ]]; then
  remote="${WORKER_ID_SNIPPET}; G=\"\""
  remote+="; for f in ${pidglob}; do [ -f \"\$f\" ] || continue; p=\$(cat \"\$f\"); if kill -0 \"\$p\" 2>/dev/null; then G=\"\$G \$p\"; fi; done"
  remote+="; if [ -z \"\$G\" ]; then echo \"[w\$W] nothing running\"; exit 0; fi"
  remote+="; echo \"[w\$W] SIG${SIGNAL} to process group(s)\$G\""
  remote+="; for p in \$G; do kill -${SIGNAL} -- -\$p 2>/dev/null || true; done"
  remote+="; t=0; while [ \$t -lt ${GRACE_S} ]; do alive=\"\"; for p in \$G; do kill -0 -- -\$p 2>/dev/null && alive=1; done; [ -z \"\$alive\" ] && break; sleep 1; t=\$((t+1)); done"
  remote+="; for p in \$G; do if kill -0 -- -\$p 2>/dev/null; then echo \"[w\$W] SIGKILL to \$p\"; kill -KILL -- -\$p 2>/dev/null || true; fi; done"
  remote+="; echo \"[w\$W] stopped\""
  tpu_ssh all "$remote"
fi

if [[ "$DELETE" == 1 ]]; then
  gcloud_location_flags
  run "$GCLOUD" compute tpus queued-resources delete "$NAME" "${GLOC[@]}" --force --quiet
fi
