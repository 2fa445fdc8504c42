#!/usr/bin/env bash
# Show or follow the logs of a run on one or all TPU workers.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_logs.sh --name=NAME --zone=ZONE [--run=RUN] [--worker=all|I]
                          [--lines=N] [--follow] [--fetch=LOCAL_DIR] [--list]

Prints the last lines of <log_root>/<run>/worker-<i>.log. With --worker=all
(the default) every line is prefixed with "[w<i>]". --follow keeps tailing
(Ctrl-C stops the tail, not the run). --fetch copies the log files to
LOCAL_DIR/<run>/ instead. --list lists the runs on worker 0.

Options:
  --run=RUN        run name as printed by tpu_run.sh (default: the latest run)
  --worker=W       "all" or a worker index (default all)
  --lines=N        lines per worker (default 50)
  --follow, -f     keep following the logs
  --fetch=DIR      copy worker-*.log back to DIR/<run>/
  --list           list the runs (newest first) and their status files
USAGE
  common_usage
}

RUN_NAME="latest"
WORKER="all"
LINES=50
FOLLOW=0
FETCH=""
LIST=0

while [[ $# -gt 0 ]]; do
  if parse_common "$@"; then shift "$OPTSHIFT"; continue; fi
  case "$1" in
    --run|--run=*|--run_name|--run_name=*) take_value "$@"; RUN_NAME="$OPTVAL" ;;
    --worker|--worker=*) take_value "$@"; WORKER="$OPTVAL" ;;
    --lines|--lines=*|-n) take_value "$@"; LINES="$OPTVAL" ;;
    --follow|-f) FOLLOW=1; OPTSHIFT=1 ;;
    --fetch|--fetch=*) take_value "$@"; FETCH="$OPTVAL" ;;
    --list) LIST=1; OPTSHIFT=1 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift "$OPTSHIFT"
done

require_tpu_flags
[[ "$WORKER" == all || "$WORKER" =~ ^[0-9]+$ ]] || die "--worker must be all or an index"
[[ "$LINES" =~ ^[0-9]+$ ]] || die "--lines must be a number"

RLOGS="$(remote_path "$LOG_ROOT")"
RUNDIR="${RLOGS}/$(safe_name "$RUN_NAME")"

if [[ "$LIST" == 1 ]]; then
  tpu_ssh 0 "ls -lt ${RLOGS} && ls -l ${RLOGS}/*/worker-0.*"
  exit 0
fi

if [[ -n "$FETCH" ]]; then
  # The run name behind "latest" is only known on the workers.
  if [[ "$RUN_NAME" == latest ]]; then
    die "--fetch needs an explicit --run (see --list)"
  fi
  run mkdir -p "${FETCH}/${RUN_NAME}"
  tpu_scp "${NAME}:${LOG_ROOT}/${RUN_NAME}/worker-*.log" "${FETCH}/${RUN_NAME}/" "$WORKER"
  exit 0
fi

tail_flags="-n ${LINES}"
if [[ "$FOLLOW" == 1 ]]; then tail_flags+=" -F"; fi
remote="${WORKER_ID_SNIPPET}; f=${RUNDIR}/worker-\$W.log"
remote+="; [ -e \"\$f\" ] || { echo \"[w\$W] no log \$f\" >&2; exit 1; }"
if [[ "$WORKER" == all ]]; then
  remote+="; tail ${tail_flags} \"\$f\" | sed -u \"s/^/[w\$W] /\""
else
  remote+="; tail ${tail_flags} \"\$f\""
fi
tpu_ssh "$WORKER" "$remote"
