#!/usr/bin/env bash
# Run an experiment to its last step on spot TPU slices: create, set up, run,
# and after a preemption delete the slice and start again.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_supervise.sh --name=NAME --zone=ZONE --config=experiments/X.py[:ARG]
                               --workdir=gs://BUCKET/DIR [options] [--config.a.b=V ...]
                               [-- MORE_ARGS_FOR_MAIN ...]

Unattended spot training. Each attempt
  1. creates the queued resource NAME (tpu_create.sh, spot by default) and
     polls until it is ACTIVE;
  2. deploys the commit pinned when the supervisor started (tpu_setup.sh),
     then runs --prepare on every worker;
  3. runs the experiment (tpu_run.sh --wait; it resumes from the workdir's
     latest checkpoint).
Then the workdir's own record decides (`launch/sweep.py --finished`: its
metrics.jsonl reached the last step, as for launch/slurm_train.sbatch): done
means the slice is deleted and the supervisor exits 0, whatever the run's exit
status was. Otherwise, if the slice was preempted, SUSPENDED, FAILED or
unreachable (tpu_run.sh --wait's 90-92), the run stopped early with status 0
(SIGTERM), or the create, the wait for ACTIVE or the setup failed, the slice
is deleted and the next attempt starts after a back-off. Another status is
the run's own failure: the slice is deleted and the supervisor exits with it.

Only the queued resource this supervisor created is ever deleted: if NAME
already exists it refuses to start. Interrupted (Ctrl-C, SIGTERM), it stops
the run (tpu_stop.sh: the run saves) and deletes the slice it created.

Exit status: 0 done; 2 bad usage, NAME exists, or the workdir is unreadable;
93 --max_attempts attempts without reaching the last step; else the run's.

Options:
  --config, --workdir, --config.X=V, --run_name, --env, --python, --kill_stale,
  --max_unreachable, --     as for tpu_run.sh (--config, --workdir required)
  --accelerator_type, --runtime_version, --spot (default), --reserved,
  --on_demand, --valid_until, --network, --subnetwork, --service_account,
  --internal_ips            as for tpu_create.sh
  --commit, --extras, --python_version, --pip_args, --skip_install
                            as for tpu_setup.sh (--commit default HEAD, resolved
                            once: every attempt deploys the same commit)
  --prepare=CMD             remote bash command for every worker after the
                            setup, each attempt (e.g. copy the data set)
  --max_attempts=N          slices to create at most (default 20)
  --backoff_s=S             wait before the next attempt (default 60); doubles
                            after each attempt that did not advance the
                            checkpoint, back to S after one that did
  --max_backoff_s=S         longest wait (default 3600)
  --poll_s=S                poll interval for ACTIVE and for the run (default 60)
The workdir is read here with $TRM_PYTHON (default python3), which needs
trm_jax installed (and gcsfs for gs://).
USAGE
  common_usage
}

WORKDIR=""
RUN_NAME=""
CONFIG=""
COMMIT="HEAD"
PREPARE=""
MAX_ATTEMPTS=20
BACKOFF_S=60
MAX_BACKOFF_S=3600
POLL_S=60
CREATE=()
SETUP=()
RUN=()
PASS=()

while [[ $# -gt 0 ]]; do
  if parse_common "$@"; then shift "$OPTSHIFT"; continue; fi
  case "$1" in
    --config|--config=*) take_value "$@"; CONFIG="$OPTVAL" ;;
    --workdir|--workdir=*) take_value "$@"; WORKDIR="$OPTVAL" ;;
    --run_name|--run_name=*) take_value "$@"; RUN_NAME="$OPTVAL" ;;
    --config.*|--kill_stale) RUN+=("$1"); OPTSHIFT=1 ;;
    --env|--env=*|--python|--python=*|--max_unreachable|--max_unreachable=*)
      take_value "$@"; RUN+=("${1%%=*}=${OPTVAL}") ;;
    --spot|--reserved|--on_demand|--internal_ips) CREATE+=("$1"); OPTSHIFT=1 ;;
    --accelerator_type*|--runtime_version*|--valid_until*|--network*|--subnetwork*|--service_account*)
      take_value "$@"; CREATE+=("${1%%=*}=${OPTVAL}") ;;
    --commit|--commit=*) take_value "$@"; COMMIT="$OPTVAL" ;;
    --skip_install) SETUP+=("$1"); OPTSHIFT=1 ;;
    --extras|--extras=*|--python_version|--python_version=*|--pip_args|--pip_args=*)
      take_value "$@"; SETUP+=("${1%%=*}=${OPTVAL}") ;;
    --prepare|--prepare=*) take_value "$@"; PREPARE="$OPTVAL" ;;
    --max_attempts|--max_attempts=*) take_value "$@"; MAX_ATTEMPTS="$OPTVAL" ;;
    --backoff_s|--backoff_s=*) take_value "$@"; BACKOFF_S="$OPTVAL" ;;
    --max_backoff_s|--max_backoff_s=*) take_value "$@"; MAX_BACKOFF_S="$OPTVAL" ;;
    --poll_s|--poll_s=*) take_value "$@"; POLL_S="$OPTVAL" ;;
    --) shift; PASS=("$@"); break ;;
    *) die "unknown argument: $1 (pass arguments for trm_jax.main after --; see --help)" ;;
  esac
  shift "$OPTSHIFT"
done

require_tpu_flags
[[ -n "$CONFIG" ]] || die "--config is required"
[[ -n "$WORKDIR" ]] || die "--workdir is required"
[[ "$MAX_ATTEMPTS" =~ ^[1-9][0-9]*$ ]] || die "--max_attempts must be a positive number, got ${MAX_ATTEMPTS}"
for f in backoff_s:"$BACKOFF_S" max_backoff_s:"$MAX_BACKOFF_S" poll_s:"$POLL_S"; do
  [[ "${f#*:}" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--${f%%:*} must be a number of seconds, got ${f#*:}"
done
SHA="$(git -C "$REPO_ROOT" rev-parse --verify -q "${COMMIT}^{commit}")" || die "--commit: unknown revision ${COMMIT}"
if [[ -z "$RUN_NAME" ]]; then RUN_NAME="$(basename "${CONFIG%%:*}" .py)-$(date -u +%Y%m%d-%H%M%S)"; fi

COMMON=("--name=${NAME}" "--zone=${ZONE}" "--remote_dir=${REMOTE_DIR}" "--venv=${VENV}"
        "--log_root=${LOG_ROOT}" "--ssh_via=${SSH_VIA}")
if [[ -n "$PROJECT" ]]; then COMMON+=("--project=${PROJECT}"); fi
if [[ "$DRY_RUN" == 1 ]]; then COMMON+=(--dry_run); fi
SETUP+=("--commit=${SHA}")
RUN=("--config=${CONFIG}" "--workdir=${WORKDIR}" "--run_name=${RUN_NAME}" --wait "--poll_s=${POLL_S}"
     ${RUN[@]+"${RUN[@]}"} -- ${PASS[@]+"${PASS[@]}"})

if [[ "$DRY_RUN" == 1 ]]; then  # one attempt's commands
  "${LAUNCH_DIR}/tpu_create.sh" "${COMMON[@]}" ${CREATE[@]+"${CREATE[@]}"} --wait
  "${LAUNCH_DIR}/tpu_setup.sh" "${COMMON[@]}" "${SETUP[@]}"
  if [[ -n "$PREPARE" ]]; then tpu_ssh all "$PREPARE"; fi
  "${LAUNCH_DIR}/tpu_run.sh" "${COMMON[@]}" "${RUN[@]}"
  "${LAUNCH_DIR}/tpu_stop.sh" "${COMMON[@]}" --no_stop --delete
  exit 0
fi

# check_done: DONE=1 if the workdir reached its last step; STEP: its newest checkpoint.
check_done() {
  local out
  DONE=0
  out="$("${TRM_PYTHON:-python3}" "${LAUNCH_DIR}/sweep.py" "--finished=${WORKDIR}")" && DONE=1
  STEP="$(sed -n 's/.*checkpoint=\([0-9-]*\).*/\1/p' <<< "$out")"
  [[ -n "$STEP" ]]
}

# wait_active: polls until NAME is ACTIVE (0) or gone, FAILED or SUSPENDED (1).
wait_active() {
  local misses=0
  while true; do
    STATE="$(qr_state)"
    case "$STATE" in
      ACTIVE) return 0 ;;
      FAILED|SUSPENDED|SUSPENDING|DELETING) return 1 ;;
      "") misses=$((misses + 1)); STATE=unknown; [[ "$misses" -lt 10 ]] || return 1 ;;
    esac
    sleep "$POLL_S"
  done
}

CREATED=0
delete_slice() {
  if [[ "$CREATED" == 1 ]]; then
    "${LAUNCH_DIR}/tpu_stop.sh" "${COMMON[@]}" --no_stop --delete || log "warning: could not delete ${NAME}"
    CREATED=0
  fi
}
# Interrupted (Ctrl-C, kill): the run saves and stops (tpu_stop.sh), then the slice it created goes.
RUN_PID=
on_signal() {
  trap - INT TERM
  if [[ -n "$RUN_PID" ]]; then kill "$RUN_PID" 2>/dev/null || true; fi  # its wait loop (it ignores SIGINT)
  if [[ "$CREATED" == 1 ]]; then
    log "interrupted: stopping ${RUN_NAME} and deleting ${NAME}"
    "${LAUNCH_DIR}/tpu_stop.sh" "${COMMON[@]}" "--run=${RUN_NAME}" || true
    delete_slice
  fi
  exit 130
}
trap on_signal INT TERM

state="$(qr_state)"
[[ -z "$state" ]] || die "queued resource ${NAME} already exists (${state}); it is left alone: delete it (launch/tpu_stop.sh --no_stop --delete) or choose another --name"
check_done || die "cannot read the progress of ${WORKDIR} (${TRM_PYTHON:-python3} launch/sweep.py --finished; set TRM_PYTHON)"

attempt=0
delay="$BACKOFF_S"
while [[ "$DONE" == 0 ]]; do
  if [[ "$attempt" -ge "$MAX_ATTEMPTS" ]]; then
    log "${RUN_NAME}: giving up after ${attempt} attempt(s) (last: ${outcome}); ${WORKDIR} at checkpoint ${STEP} (exit 93)"
    exit 93
  fi
  if [[ "$attempt" -gt 0 ]]; then
    log "${RUN_NAME}: next attempt in ${delay} s"
    sleep "$delay"
    delay="$(awk -v d="$delay" -v m="$MAX_BACKOFF_S" 'BEGIN { d *= 2; print (d > m ? m : d) }')"
  fi
  attempt=$((attempt + 1))
  from="$STEP"
  start="$(date -u +%FT%TZ)"
  log "${RUN_NAME}: attempt ${attempt}/${MAX_ATTEMPTS} at ${start}: creating ${NAME}, resuming from checkpoint ${from}"
  rc=0
  if ! "${LAUNCH_DIR}/tpu_create.sh" "${COMMON[@]}" ${CREATE[@]+"${CREATE[@]}"}; then
    outcome="create failed"
  else
    CREATED=1
    if ! wait_active; then
      outcome="queued resource ${STATE}"
    elif ! "${LAUNCH_DIR}/tpu_setup.sh" "${COMMON[@]}" "${SETUP[@]}" \
         || { [[ -n "$PREPARE" ]] && ! tpu_ssh all "$PREPARE"; }; then
      outcome="setup failed (queued resource $(qr_state))"
    else
      # In the background, so that a signal runs on_signal at once: a foreground child that outlives a
      # Ctrl-C (it arrived while tpu_run.sh was starting the run) would keep this shell waiting.
      "${LAUNCH_DIR}/tpu_run.sh" "${COMMON[@]}" "${RUN[@]}" &
      RUN_PID=$!
      wait "$RUN_PID" || rc=$?
      RUN_PID=
      outcome="run exit ${rc} (queued resource $(qr_state))"
    fi
  fi
  if [[ "$CREATED" == 1 ]]; then check_done || log "warning: cannot read the progress of ${WORKDIR}"; fi
  log "${RUN_NAME}: attempt ${attempt}/${MAX_ATTEMPTS} (started ${start}, resumed from checkpoint ${from}): ${outcome}; checkpoint now ${STEP}"
  if [[ "$DONE" == 0 && "$rc" != 0 && ! "$rc" =~ ^9[012]$ ]]; then
    log "${RUN_NAME}: the run failed with status ${rc} (not a preemption); its logs go to ./logs/${RUN_NAME}/"
    "${LAUNCH_DIR}/tpu_logs.sh" "${COMMON[@]}" "--run=${RUN_NAME}" --fetch=logs || true
    delete_slice
    exit "$rc"
  fi
  delete_slice
  if [[ "$STEP" != "$from" ]]; then delay="$BACKOFF_S"; fi
done
log "${RUN_NAME}: ${WORKDIR} reached its last step (checkpoint ${STEP}) after ${attempt} attempt(s); ${NAME} deleted"
