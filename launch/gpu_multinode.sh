#!/usr/bin/env bash
# Multi-node GPU training: one JAX process per node, all GPUs of a node each.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage (ssh, N hosts x G GPUs; the code and a venv already on every host):
  launch/gpu_multinode.sh --hosts=node0,node1,... --config=experiments/X.py[:ARG]
      --workdir=DIR [--gpus_per_node=8] [--port=12355] [--config.a.b=V ...]
      [-- MORE_ARGS_FOR_MAIN]
Usage (SLURM):
  launch/gpu_multinode.sh --slurm --nodes=N --config=... --workdir=... [--partition=P]
      [--time=24:00:00] [--account=A] [--gpus_per_node=8] [--config.a.b=V ...]

Every node runs one process
  PYTHON -m trm_jax.main --config=CONFIG --workdir=WORKDIR
      --coordinator_address=<first host>:PORT --num_processes=N --process_id=I
that drives the node's G GPUs (jax.distributed: process I of N, coordinated by
process 0 on the first host, which must be reachable on PORT from the others).
WORKDIR must be a shared file system path (NFS, Lustre, gs://).

ssh mode: `ssh HOST` per node, started with setsid + nohup; logs go to
  HOST:<remote_dir>/<log_root>/<run>/worker-<i>.log (stop with
  ssh HOST 'kill -TERM -- -$(cat .../worker-<i>.pid)').
SLURM mode: writes <repo>/<log_root>/<run>/job.sbatch and submits it with
  sbatch; `srun` starts one task per node, worker-<task>.log per node.
  Under --dry_run the script is printed as a `cat > FILE <<'EOF'` command.

Options:
  --hosts=H0,H1,...    ssh mode: the nodes, process 0 first
  --slurm              SLURM mode
  --nodes=N            SLURM mode: number of nodes
  --gpus_per_node=G    GPUs per node (default 8); sets CUDA_VISIBLE_DEVICES in ssh mode
  --port=PORT          coordinator port on the first node (default 12355)
  --python=PATH        interpreter on the nodes (default <remote_dir>/../<venv>/bin/python
                       in ssh mode, i.e. $HOME/trm_venv/bin/python; python3 under SLURM)
  --run_name=RUN       log directory name (default <experiment>-<UTC time>)
  --env=KEY=VALUE      environment variable for the run (repeatable)
  --partition=P, --account=A, --time=T, --cpus_per_task=C   SLURM directives
  --ssh=CMD            ssh client (default ssh; env SSH)
USAGE
  common_usage
}

HOSTS=""
SLURM=0
NODES=""
GPUS=8
PORT=12355
PYTHON=""
CONFIG=""
WORKDIR=""
RUN_NAME=""
PARTITION=""
ACCOUNT=""
TIME="24:00:00"
CPUS=""
SSH="${SSH:-ssh}"
ENVS=()
PASS=()

while [[ $# -gt 0 ]]; do
  if parse_common "$@"; then shift "$OPTSHIFT"; continue; fi
  case "$1" in
    --hosts|--hosts=*) take_value "$@"; HOSTS="$OPTVAL" ;;
    --slurm) SLURM=1; OPTSHIFT=1 ;;
    --nodes|--nodes=*) take_value "$@"; NODES="$OPTVAL" ;;
    --gpus_per_node|--gpus_per_node=*) take_value "$@"; GPUS="$OPTVAL" ;;
    --port|--port=*) take_value "$@"; PORT="$OPTVAL" ;;
    --python|--python=*) take_value "$@"; PYTHON="$OPTVAL" ;;
    --config|--config=*) take_value "$@"; CONFIG="$OPTVAL" ;;
    --config.*) PASS+=("$1"); OPTSHIFT=1 ;;
    --workdir|--workdir=*) take_value "$@"; WORKDIR="$OPTVAL" ;;
    --run_name|--run_name=*) take_value "$@"; RUN_NAME="$OPTVAL" ;;
    --env|--env=*) take_value "$@"; ENVS+=("$OPTVAL") ;;
    --partition|--partition=*) take_value "$@"; PARTITION="$OPTVAL" ;;
    --account|--account=*) take_value "$@"; ACCOUNT="$OPTVAL" ;;
    --time|--time=*) take_value "$@"; TIME="$OPTVAL" ;;
    --cpus_per_task|--cpus_per_task=*) take_value "$@"; CPUS="$OPTVAL" ;;
    --ssh|--ssh=*) take_value "$@"; SSH="$OPTVAL" ;;
    --) shift; PASS+=("$@"); break ;;
    *) die "unknown argument: $1 (pass arguments for trm_jax.main after --; see --help)" ;;
  esac
  shift "$OPTSHIFT"
done

[[ -n "$CONFIG" ]] || die "--config is required"
[[ -n "$WORKDIR" ]] || die "--workdir is required"
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] || die "--gpus_per_node must be a positive number"
[[ "$PORT" =~ ^[0-9]+$ ]] || die "--port must be a number"
for kv in "${ENVS[@]+"${ENVS[@]}"}"; do
  [[ "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants KEY=VALUE, got ${kv}"
done
if [[ -z "$RUN_NAME" ]]; then
  RUN_NAME="$(basename "${CONFIG%%:*}" .py)-$(date -u +%Y%m%d-%H%M%S)"
fi
RUN_NAME="$(safe_name "$RUN_NAME")"
main_args="$(shell_join "--config=${CONFIG}" "--workdir=${WORKDIR}")"
pass_args="$(shell_join ${PASS[@]+"${PASS[@]}"})"
env_prefix=""
if [[ ${#ENVS[@]} -gt 0 ]]; then env_prefix="env $(shell_join "${ENVS[@]}") "; fi

if [[ "$SLURM" == 1 ]]; then
  [[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "--slurm needs --nodes=N"
  [[ -n "$PYTHON" ]] || PYTHON="python3"
  # Absolute paths: the job runs from the repository root on the shared file system.
  if [[ "$LOG_ROOT" == /* ]]; then rundir="${LOG_ROOT}/${RUN_NAME}"; else rundir="${REPO_ROOT}/${LOG_ROOT}/${RUN_NAME}"; fi
  script="${rundir}/job.sbatch"
  task_cmd="exec ${env_prefix}$(shell_quote "$PYTHON") -m trm_jax.main ${main_args}"
  task_cmd+=" --coordinator_address=\"\$TRM_COORDINATOR\" --num_processes=\"\$SLURM_NTASKS\" --process_id=\"\$SLURM_PROCID\""
  if [[ -n "$pass_args" ]]; then task_cmd+=" ${pass_args}"; fi
  body="#!/bin/bash
#SBATCH --job-name=${RUN_NAME}
#SBATCH --nodes=${NODES}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=${GPUS}
#SBATCH --time=${TIME}
#SBATCH --output=${rundir}/slurm-%j.out"
  if [[ -n "$CPUS" ]]; then body+=$'\n'"#SBATCH --cpus-per-task=${CPUS}"; fi
  if [[ -n "$PARTITION" ]]; then body+=$'\n'"#SBATCH --partition=${PARTITION}"; fi
  if [[ -n "$ACCOUNT" ]]; then body+=$'\n'"#SBATCH --account=${ACCOUNT}"; fi
  body+="
# Generated by launch/gpu_multinode.sh: ${NODES} node(s) x ${GPUS} GPU(s), one JAX process per node.
set -euo pipefail
cd $(shell_quote "$REPO_ROOT")
export TRM_COORDINATOR=\"\$(scontrol show hostnames \"\$SLURM_JOB_NODELIST\" | head -n 1):${PORT}\"
echo \"coordinator \$TRM_COORDINATOR, \$SLURM_NTASKS processes\"
srun --kill-on-bad-exit=1 --output=${rundir}/worker-%t.log \\
  bash -c $(shell_quote "$task_cmd")"
  if [[ "$DRY_RUN" == 1 ]]; then
    printf 'mkdir -p %s\n' "$(shell_quote "$rundir")"
    printf "cat > %s <<'EOF'\n%s\nEOF\n" "$(shell_quote "$script")" "$body"
  else
    mkdir -p "$rundir"
    printf '%s\n' "$body" > "$script"
    log "wrote ${script}"
  fi
  run sbatch "$script"
  exit 0
fi

[[ -n "$HOSTS" ]] || die "--hosts=H0,H1,... (or --slurm) is required"
IFS=',' read -r -a HOST_LIST <<< "$HOSTS"
N="${#HOST_LIST[@]}"
COORD="${HOST_LIST[0]}:${PORT}"
devices="$(seq -s, 0 $((GPUS - 1)))"
RDIR="$(remote_path "$REMOTE_DIR")"
RUNDIR="$(remote_path "$LOG_ROOT")/${RUN_NAME}"
if [[ -z "$PYTHON" ]]; then PYTHON="$(remote_path "$VENV")/bin/python"; fi

for i in "${!HOST_LIST[@]}"; do
  host="${HOST_LIST[$i]}"
  cmd="${env_prefix}CUDA_VISIBLE_DEVICES=${devices} ${PYTHON} -m trm_jax.main ${main_args}"
  cmd+=" --coordinator_address=${COORD} --num_processes=${N} --process_id=${i}"
  if [[ -n "$pass_args" ]]; then cmd+=" ${pass_args}"; fi
  remote="set -euo pipefail; mkdir -p ${RUNDIR}; cd ${RDIR}"
  remote+="; setsid nohup bash -c $(shell_quote "$cmd; echo \"# exit status \$?\"") > ${RUNDIR}/worker-${i}.log 2>&1 < /dev/null &"
  remote+=" echo \$! > ${RUNDIR}/worker-${i}.pid; echo \"${host}: process ${i}/${N} started (${RUN_NAME})\""
  # shellcheck disable=SC2086
  run $SSH "$host" "$remote"
done
log "logs: ssh HOST tail -f '\$HOME/${LOG_ROOT}/${RUN_NAME}/worker-<i>.log'"
