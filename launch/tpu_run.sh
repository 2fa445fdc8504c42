#!/usr/bin/env bash
# Start an experiment on every worker of a TPU pod slice, detached from ssh.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_run.sh --name=NAME --zone=ZONE --config=experiments/X.py[:ARG]
                         --workdir=gs://BUCKET/DIR [options] [--config.a.b=V ...]
                         [-- MORE_ARGS_FOR_MAIN ...]

Runs, on all workers at once (`gcloud compute tpus tpu-vm ssh --worker=all`),

  <venv>/bin/python -m trm_jax.main --config=CONFIG --workdir=WORKDIR OVERRIDES

inside $HOME/<remote_dir>, started with setsid + nohup so that the run survives
a dropped ssh connection. Worker i writes
  $HOME/<log_root>/<run>/worker-<i>.log   stdout + stderr
  $HOME/<log_root>/<run>/worker-<i>.pid   process-group id (for tpu_stop.sh)
  $HOME/<log_root>/<run>/worker-<i>.rc    exit status, once it has finished
and <log_root>/latest points at the newest run. On TPU, jax.distributed is
initialised from the TPU VM metadata (the command gets --distributed): no
coordinator flags are needed. WORKDIR must be
shared by all workers (a gs:// path) so that checkpoints from every host land
in one place.

Options:
  --config=SPEC        experiment file (relative to the repository root), with
                       an optional ":ARG"                               [required]
  --workdir=DIR        run directory, normally gs://...                  [required]
  --config.X=V         config overrides, passed through unchanged (repeatable)
  --run_name=RUN       log directory name (default <experiment>-<UTC time>)
  --env=KEY=VALUE      environment variable for the run (repeatable)
  --python=PATH        interpreter on the workers (default <venv>/bin/python)
  --kill_stale         first kill any process holding the TPU (see tpu_free.sh)
  --wait               block until every worker has finished (polls over ssh;
                       used by sweep.py --launcher=tpu), then exit with the
                       first non-zero worker status, or 0. It gives up with
                         90  after --max_unreachable polls in a row could not
                             reach the workers (queued resource still ACTIVE)
                         91  the queued resource is SUSPENDED, SUSPENDING,
                             DELETING or FAILED (spot preemption, deletion)
                         92  a worker's process is gone without an exit status
                             (SIGKILLed, VM restarted)
  --poll_s=SECONDS     polling interval for --wait (default 60)
  --max_unreachable=N  --wait: unreachable polls in a row before 90 (default 10)
  --                   everything after it is passed to trm_jax.main verbatim

Example:
  launch/tpu_run.sh --name=trm-v5e --zone=us-west4-a \
      --config=experiments/arc1.py --workdir=gs://my-bucket/trm/arc1 \
      --config.train.lr=1e-4
USAGE
  common_usage
}

CONFIG=""
WORKDIR=""
RUN_NAME=""
PYTHON=""
KILL_STALE=0
WAIT=0
POLL_S=60
MAX_UNREACHABLE=10
ENVS=()
PASS=()

while [[ $# -gt 0 ]]; do
  if parse_common "$@"; then shift "$OPTSHIFT"; continue; fi
  case "$1" in
    --config|--config=*) take_value "$@"; CONFIG="$OPTVAL" ;;
    --config.*) PASS+=("$1"); OPTSHIFT=1 ;;
    --workdir|--workdir=*) take_value "$@"; WORKDIR="$OPTVAL" ;;
    --run_name|--run_name=*) take_value "$@"; RUN_NAME="$OPTVAL" ;;
    --env|--env=*) take_value "$@"; ENVS+=("$OPTVAL") ;;
    --python|--python=*) take_value "$@"; PYTHON="$OPTVAL" ;;
    --kill_stale) KILL_STALE=1; OPTSHIFT=1 ;;
    --wait) WAIT=1; OPTSHIFT=1 ;;
    --poll_s|--poll_s=*) take_value "$@"; POLL_S="$OPTVAL" ;;
    --max_unreachable|--max_unreachable=*) take_value "$@"; MAX_UNREACHABLE="$OPTVAL" ;;
    --) shift; PASS+=("$@"); break ;;
    *) die "unknown argument: $1 (pass arguments for trm_jax.main after --; see --help)" ;;
  esac
  shift "$OPTSHIFT"
done

require_tpu_flags
[[ -n "$CONFIG" ]] || die "--config is required"
[[ -n "$WORKDIR" ]] || die "--workdir is required"
[[ "$MAX_UNREACHABLE" =~ ^[1-9][0-9]*$ ]] || die "--max_unreachable must be a positive number"
for kv in "${ENVS[@]+"${ENVS[@]}"}"; do
  [[ "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants KEY=VALUE, got ${kv}"
done

if [[ -z "$RUN_NAME" ]]; then
  exp="$(basename "${CONFIG%%:*}" .py)"
  RUN_NAME="${exp}-$(date -u +%Y%m%d-%H%M%S)"
fi
RUN_NAME="$(safe_name "$RUN_NAME")"

RDIR="$(remote_path "$REMOTE_DIR")"
RLOGS="$(remote_path "$LOG_ROOT")"
RUNDIR="${RLOGS}/${RUN_NAME}"
if [[ -z "$PYTHON" ]]; then PYTHON="$(remote_path "$VENV")/bin/python"; fi

# The command each worker runs. $PYTHON may hold "$HOME" and is expanded by the
# worker's shell, so it is not quoted again.
main_cmd="${PYTHON} -m trm_jax.main $(shell_join --distributed "--config=${CONFIG}" "--workdir=${WORKDIR}" ${PASS[@]+"${PASS[@]}"})"
if [[ ${#ENVS[@]} -gt 0 ]]; then main_cmd="env $(shell_join "${ENVS[@]}") ${main_cmd}"; fi

# Inner script, run by a detached bash: log a header, run, record the status.
# The trap keeps this shell alive when its process group is signalled
# (tpu_stop.sh, a preemption): it waits for the run to save and exit, then
# still writes worker-<i>.rc (atomically, via a temporary file).
inner="trap 'echo \"# signal received; waiting for the run to exit\"' TERM INT HUP; cd ${RDIR} && echo \"# \$(date -u +%FT%TZ) \$(hostname) worker \$TRM_WORKER commit \$(cat COMMIT 2>/dev/null || echo unknown)\""
inner+=" && echo $(shell_quote "# ${main_cmd}")"
inner+=" && ${main_cmd}; rc=\$?; echo \"# exit status \$rc\"; echo \$rc > ${RUNDIR}/worker-\$TRM_WORKER.rc.tmp; mv -f ${RUNDIR}/worker-\$TRM_WORKER.rc.tmp ${RUNDIR}/worker-\$TRM_WORKER.rc"

remote="set -euo pipefail; ${WORKER_ID_SNIPPET}; export TRM_WORKER=\$W"
if [[ "$KILL_STALE" == 1 ]]; then remote+="; $(free_tpu_snippet TERM)"; fi
remote+="; mkdir -p ${RUNDIR}"
remote+="; if [ -f ${RUNDIR}/worker-\$W.pid ] && kill -0 \$(cat ${RUNDIR}/worker-\$W.pid) 2>/dev/null; then echo \"worker \$W: ${RUN_NAME} is already running\" >&2; exit 1; fi"
remote+="; rm -f ${RUNDIR}/worker-\$W.rc"
remote+="; setsid nohup bash -c $(shell_quote "$inner") > ${RUNDIR}/worker-\$W.log 2>&1 < /dev/null &"
remote+=" echo \$! > ${RUNDIR}/worker-\$W.pid"
remote+="; ln -sfn ${RUN_NAME} ${RLOGS}/latest"
remote+="; echo \"worker \$W: started ${RUN_NAME} (pid \$(cat ${RUNDIR}/worker-\$W.pid))\""

tpu_ssh all "$remote"

log "run ${RUN_NAME}: logs with  launch/tpu_logs.sh --name=${NAME} --zone=${ZONE} --run=${RUN_NAME}"

if [[ "$WAIT" == 1 ]]; then
  # One line per worker: "status W RC", "running W" or "dead W" (no process, no status).
  poll="${WORKER_ID_SNIPPET}; d=${RUNDIR}; if [ -f \$d/worker-\$W.rc ]; then echo \"status \$W \$(cat \$d/worker-\$W.rc)\";"
  poll+=" elif [ -f \$d/worker-\$W.pid ] && kill -0 \$(cat \$d/worker-\$W.pid) 2>/dev/null; then echo \"running \$W\";"
  poll+=" else echo \"dead \$W\"; fi"
  if [[ "$DRY_RUN" == 1 ]]; then
    tpu_ssh all "$poll"
    exit 0
  fi
  misses=0
  while true; do
    sleep "$POLL_S"
    if ! out="$(tpu_ssh all "$poll" 2>/dev/null)" || [[ -z "$out" ]]; then
      state="$(qr_state)"
      case "$state" in
        SUSPENDED|SUSPENDING|DELETING|FAILED)
          log "${RUN_NAME}: queued resource ${NAME} is ${state}; giving up (exit 91)"
          exit 91 ;;
      esac
      misses=$((misses + 1))
      log "${RUN_NAME}: workers unreachable (${misses}/${MAX_UNREACHABLE}; queued resource: ${state:-unknown})"
      if [[ "$misses" -ge "$MAX_UNREACHABLE" ]]; then
        log "${RUN_NAME}: giving up after ${misses} unreachable polls (exit 90)"
        exit 90
      fi
      continue
    fi
    misses=0
    if grep -q '^running ' <<< "$out"; then
      log "${RUN_NAME}: $(grep -c '^running ' <<< "$out") worker(s) running"
      continue
    fi
    dead="$(awk '$1 == "dead" {printf " %s", $2}' <<< "$out")"
    if [[ -n "$dead" ]]; then
      log "${RUN_NAME}: worker(s)${dead} ended without an exit status (killed?); see launch/tpu_logs.sh --run=${RUN_NAME} (exit 92)"
      exit 92
    fi
    statuses="$(awk '$1 == "status" {printf " w%s=%s", $2, $3}' <<< "$out")"
    first_bad="$(sort -k2,2n <<< "$out" | awk '$1 == "status" && $3 != 0 {print $3; exit}')"
    log "${RUN_NAME}: finished; exit status${statuses}"
    exit "${first_bad:-0}"
  done
fi
