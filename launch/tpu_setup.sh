#!/usr/bin/env bash
# Copy the code at a pinned commit to every TPU worker and install it.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_setup.sh --name=NAME --zone=ZONE [options]

1. `git archive` the repository at COMMIT into a tarball (uncommitted changes
   are NOT included: commit first, the commit is what gets pinned);
2. copy it to every worker (`gcloud compute tpus tpu-vm scp --worker=all`);
3. on every worker: unpack into $HOME/<remote_dir> (replacing the previous
   code), record the commit in <remote_dir>/COMMIT, create a virtual
   environment with uv (Python --python_version; the TPU images ship an older
   system Python than jax 0.10 needs) and `pip install -e '.[tpu,gcs]'`.

Options:
  --commit=REV           git revision to deploy (default HEAD)
  --extras=LIST          pip extras to install (default tpu,gcs: gcs for gs:// workdirs)
  --python_version=VER   Python of the venv, fetched by uv (default 3.11);
                         "system" uses the image's python3 -m venv and pip
  --pip_args=ARGS        extra arguments for the pip install (one string)
  --skip_install         only copy and unpack the code
USAGE
  common_usage
}

COMMIT="HEAD"
EXTRAS="tpu,gcs"
PYVER="3.11"
PIP_ARGS=""
SKIP_INSTALL=0

while [[ $# -gt 0 ]]; do
  if parse_common "$@"; then shift "$OPTSHIFT"; continue; fi
  case "$1" in
    --commit|--commit=*) take_value "$@"; COMMIT="$OPTVAL" ;;
    --extras|--extras=*) take_value "$@"; EXTRAS="$OPTVAL" ;;
    --python_version|--python_version=*) take_value "$@"; PYVER="$OPTVAL" ;;
    --pip_args|--pip_args=*) take_value "$@"; PIP_ARGS="$OPTVAL" ;;
    --skip_install) SKIP_INSTALL=1; OPTSHIFT=1 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift "$OPTSHIFT"
done

require_tpu_flags

# Resolving the revision only reads the local repository, so it also happens
# under --dry_run (the printed commands then name the exact commit).
SHA="$(git -C "$REPO_ROOT" rev-parse --verify "${COMMIT}^{commit}")" \
  || die "unknown revision ${COMMIT}"
if [[ -n "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  log "warning: uncommitted changes are not deployed (deploying ${SHA:0:12})"
fi

TARBALL_NAME="trm_jax-${SHA:0:12}.tar.gz"
LOCAL_TARBALL="${TMPDIR:-/tmp}/${TARBALL_NAME}"
run git -C "$REPO_ROOT" archive --format=tar.gz -o "$LOCAL_TARBALL" "$SHA"
tpu_scp "$LOCAL_TARBALL" "${NAME}:${TARBALL_NAME}" all

RDIR="$(remote_path "$REMOTE_DIR")"
RVENV="$(remote_path "$VENV")"
remote="set -euo pipefail"
remote+="; rm -rf ${RDIR} && mkdir -p ${RDIR}"
remote+=" && tar -xzf \"\$HOME\"/${TARBALL_NAME} -C ${RDIR}"
remote+=" && rm -f \"\$HOME\"/${TARBALL_NAME}"
remote+=" && echo ${SHA} > ${RDIR}/COMMIT"
if [[ "$SKIP_INSTALL" == 0 ]]; then
  if [[ "$PYVER" == system ]]; then
    remote+="; [ -x ${RVENV}/bin/python ] || python3 -m venv ${RVENV}"
    remote+="; cd ${RDIR} && ${RVENV}/bin/python -m pip install -q -U pip"
    remote+=" && ${RVENV}/bin/python -m pip install -e '.[${EXTRAS}]'"
  else
    remote+="; export PATH=\"\$HOME/.local/bin:\$PATH\""
    remote+="; command -v uv >/dev/null || python3 -m pip install --user -q -U uv"
    remote+=" || curl -LsSf https://astral.sh/uv/install.sh | sh"
    remote+="; [ -x ${RVENV}/bin/python ] || uv venv --python ${PYVER} ${RVENV}"
    remote+="; cd ${RDIR} && uv pip install --python ${RVENV}/bin/python -e '.[${EXTRAS}]'"
  fi
  if [[ -n "$PIP_ARGS" ]]; then remote+=" ${PIP_ARGS}"; fi
  # Import only: initialising the TPU backend here would need every worker.
  remote+="; ${RVENV}/bin/python -c 'import jax, trm_jax; print(\"jax\", jax.__version__)'"
fi
remote+="; echo \"\$(hostname): trm_jax ${SHA:0:12} ready\""
tpu_ssh all "$remote"

if [[ "$DRY_RUN" == 0 ]]; then
  rm -f "$LOCAL_TARBALL"
  log "deployed ${SHA} to all workers of ${NAME}"
fi
