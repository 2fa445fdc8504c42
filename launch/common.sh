# shellcheck shell=bash disable=SC2034,SC2016  # library: variables are used by the scripts
# Shared helpers for the launch/*.sh scripts. Source it, do not run it:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
#
# Provides
#   * common flags: --name --zone --project --dry_run --help (see common_usage)
#     with defaults from the environment: TPU_NAME, TPU_ZONE, TPU_PROJECT;
#   * run CMD...        runs CMD, or prints it (shell-quoted) under --dry_run;
#   * tpu_ssh WORKER CMD  runs a remote bash command on one TPU worker or "all";
#   * tpu_scp SRC DST [WORKER]  copies with gcloud ... tpu-vm scp;
#   * remote_path DIR   "$HOME/DIR" for relative DIRs, used inside remote commands;
#   * shell_join ARGS   ARGS quoted so that a shell reads them back unchanged.
#
# Under --dry_run every gcloud/ssh/scp/sbatch command is printed on stdout, one
# per line, and nothing is executed; informational messages go to stderr.

set -euo pipefail

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${LAUNCH_DIR}/.." && pwd)"

DRY_RUN="${DRY_RUN:-0}"
NAME="${TPU_NAME:-}"
ZONE="${TPU_ZONE:-}"
PROJECT="${TPU_PROJECT:-}"
GCLOUD="${GCLOUD:-gcloud}"
# How ssh/scp reach the workers: external (their external IPs, gcloud's
# default), internal (--internal-ip: the launcher is inside the VPC), iap
# (--tunnel-through-iap: slices created with --internal_ips, launcher outside),
# auto (iap if the slice has no external IPs, else external).
SSH_VIA="${TPU_SSH_VIA:-external}"
# Where the code and the virtual environment live on each worker (relative to
# the remote $HOME unless absolute; no spaces).
REMOTE_DIR="${TRM_REMOTE_DIR:-trm_jax}"
VENV="${TRM_VENV:-trm_venv}"
# Per-run logs: <log_root>/<run>/worker-<i>.log (+ .pid, .rc); kept outside the
# code directory so that a new tpu_setup.sh does not delete them.
LOG_ROOT="${TRM_LOG_ROOT:-logs}"

# Text printed by --help for the flags every script understands.
common_usage() {
  cat <<'USAGE'
Common flags:
  --name=NAME        TPU VM / queued-resource name   (env TPU_NAME)
  --zone=ZONE        e.g. us-central2-b, us-west4-a  (env TPU_ZONE)
  --project=PROJECT  GCP project; gcloud's default if empty (env TPU_PROJECT)
  --remote_dir=DIR   code directory on each worker, relative to $HOME
                     (default trm_jax; env TRM_REMOTE_DIR)
  --venv=DIR         Python virtual environment on each worker, relative to
                     $HOME (default trm_venv; env TRM_VENV)
  --log_root=DIR     per-run log directories on each worker, relative to
                     $HOME (default logs; env TRM_LOG_ROOT)
  --ssh_via=MODE     how ssh/scp reach the workers: external (default),
                     internal (--internal-ip), iap (--tunnel-through-iap, for
                     slices created with --internal_ips), auto (iap when the
                     slice has no external IPs)              (env TPU_SSH_VIA)
  --dry_run          print every gcloud/ssh/scp command instead of running it
  -h, --help         show this help
Flags take "--flag=value" or "--flag value".
USAGE
}

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 2; }

# Quote one word for a POSIX shell, leaving plain words untouched so that the
# printed commands stay readable.
shell_quote() {
  local s="$1"
  if [[ -n "$s" && "$s" =~ ^[A-Za-z0-9_./=:,@%+^-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

shell_join() {
  local out="" w
  for w in "$@"; do
    out+="${out:+ }$(shell_quote "$w")"
  done
  printf '%s' "$out"
}

# run CMD ARGS...: execute, or print under --dry_run.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%s\n' "$(shell_join "$@")"
  else
    log "+ $(shell_join "$@")"
    "$@"
  fi
}

# take_value "--flag=value" or ("--flag" "value"): sets OPTVAL and OPTSHIFT
# (1 or 2 words consumed). Used by the parsers below.
take_value() {
  local flag="$1"; shift
  if [[ "$flag" == *=* ]]; then
    OPTVAL="${flag#*=}"; OPTSHIFT=1
  else
    [[ $# -ge 1 ]] || die "${flag} needs a value"
    OPTVAL="$1"; OPTSHIFT=2
  fi
}

# parse_common "$@": handles one common flag at the front of the arguments.
# Returns 0 and sets OPTSHIFT if it consumed something, 1 otherwise.
# --help calls the script's own usage() function.
parse_common() {
  OPTSHIFT=0
  case "$1" in
    --name|--name=*) take_value "$@"; NAME="$OPTVAL" ;;
    --zone|--zone=*) take_value "$@"; ZONE="$OPTVAL" ;;
    --project|--project=*) take_value "$@"; PROJECT="$OPTVAL" ;;
    --remote_dir|--remote_dir=*) take_value "$@"; REMOTE_DIR="$OPTVAL" ;;
    --venv|--venv=*) take_value "$@"; VENV="$OPTVAL" ;;
    --log_root|--log_root=*) take_value "$@"; LOG_ROOT="$OPTVAL" ;;
    --ssh_via|--ssh_via=*) take_value "$@"; SSH_VIA="$OPTVAL" ;;
    --dry_run|--dry-run) DRY_RUN=1; OPTSHIFT=1 ;;
    -h|--help) usage; exit 0 ;;
    *) return 1 ;;
  esac
  return 0
}

require_tpu_flags() {
  [[ -n "$NAME" ]] || die "--name (or TPU_NAME) is required"
  [[ -n "$ZONE" ]] || die "--zone (or TPU_ZONE) is required"
}

# Flags appended to every gcloud compute tpus call.
gcloud_location_flags() {
  GLOC=("--zone=${ZONE}")
  if [[ -n "$PROJECT" ]]; then GLOC+=("--project=${PROJECT}"); fi
}

# Sets SSH_FLAGS from --ssh_via (auto asks gcloud once whether the slice has
# external IPs).
ssh_via_flags() {
  SSH_FLAGS=()
  if [[ "$SSH_VIA" == auto ]]; then
    gcloud_location_flags
    local ext
    ext="$("$GCLOUD" compute tpus tpu-vm describe "$NAME" "${GLOC[@]}" \
             "--format=value(networkConfig.enableExternalIps)" 2>/dev/null || true)"
    if [[ "${ext,,}" == true ]]; then SSH_VIA=external; else SSH_VIA=iap; fi
    log "ssh via ${SSH_VIA} (external IPs: ${ext:-unknown})"
  fi
  case "$SSH_VIA" in
    external) ;;
    internal) SSH_FLAGS=(--internal-ip) ;;
    iap) SSH_FLAGS=(--tunnel-through-iap) ;;
    *) die "--ssh_via must be external, internal, iap or auto, got ${SSH_VIA}" ;;
  esac
}

# tpu_ssh WORKER REMOTE_BASH_COMMAND
tpu_ssh() {
  local worker="$1" cmd="$2"
  gcloud_location_flags
  ssh_via_flags
  run "$GCLOUD" compute tpus tpu-vm ssh "$NAME" "${GLOC[@]}" ${SSH_FLAGS[@]+"${SSH_FLAGS[@]}"} \
    "--worker=${worker}" "--command=${cmd}"
}

# tpu_scp SRC DST [WORKER=all]; remote paths are written NAME:path.
tpu_scp() {
  local src="$1" dst="$2" worker="${3:-all}"
  gcloud_location_flags
  ssh_via_flags
  run "$GCLOUD" compute tpus tpu-vm scp "$src" "$dst" "${GLOC[@]}" ${SSH_FLAGS[@]+"${SSH_FLAGS[@]}"} \
    "--worker=${worker}"
}

# qr_state: the queued resource's state (ACTIVE, SUSPENDED, ...), or "" if
# gcloud could not say.
qr_state() {
  gcloud_location_flags
  "$GCLOUD" compute tpus queued-resources describe "$NAME" "${GLOC[@]}" \
    "--format=value(state.state)" 2>/dev/null || true
}

# remote_path DIR: a path usable inside a remote command ("$HOME/DIR" for
# relative paths; expanded by the remote shell).
remote_path() {
  local d="$1"
  if [[ "$d" == /* ]]; then printf '%s' "$d"; else printf '"$HOME"/%s' "$d"; fi
}

# Snippet that sets W to this TPU worker's index ($TRM_WORKER_ID if set, else
# the metadata server, then the hostname suffix "-w-<i>", then 0).
# shellcheck disable=SC2016
WORKER_ID_SNIPPET='W=${TRM_WORKER_ID:-$(curl -sf -m 10 -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number 2>/dev/null || hostname | sed -n "s/.*-w-\([0-9][0-9]*\)\$/\1/p")}; W=${W:-0}'

# Remote snippet that kills whatever holds this worker's TPU (the chips are
# /dev/accel* on v2-v4 and v5p-style hosts, /dev/vfio/* on v5e/v6e) and removes
# libtpu's lock file. $1: signal for the first attempt (default TERM).
free_tpu_snippet() {
  local sig="${1:-TERM}"
  # shellcheck disable=SC2016
  printf '%s' 'P=$(sudo lsof -t -w /dev/accel* /dev/vfio/* 2>/dev/null | sort -u | tr "\n" " "); '\
'if [ -n "$P" ]; then echo "$(hostname): killing $P"; ps -o pid,etime,args -p $P || true; '\
"sudo kill -${sig} \$P 2>/dev/null || true; sleep 5; "\
'P=$(sudo lsof -t -w /dev/accel* /dev/vfio/* 2>/dev/null | sort -u | tr "\n" " "); '\
'if [ -n "$P" ]; then sudo kill -KILL $P 2>/dev/null || true; sleep 1; fi; '\
'else echo "$(hostname): TPU not in use"; fi; sudo rm -f /tmp/libtpu_lockfile'
}

# A filesystem-safe run name: anything outside [A-Za-z0-9._=+-] becomes "-".
safe_name() {
  local s="$1"
  s="${s//[^A-Za-z0-9._=+-]/-}"
  printf '%s' "$s"
}
