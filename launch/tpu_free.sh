#!/usr/bin/env bash
# Kill stale processes holding the TPU chips and remove libtpu's lock file.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_free.sh --name=NAME --zone=ZONE [--worker=all|I] [--signal=TERM]

"TPU in use by process ..." / "Unable to initialize backend 'tpu'" usually
means an earlier run (or a notebook) still holds the chips on some worker.
On each selected worker this lists the processes that have /dev/accel* or
/dev/vfio/* open (`sudo lsof -w`), sends them SIGNAL, SIGKILLs survivors after
5 s and removes /tmp/libtpu_lockfile.

Options:
  --worker=W    "all" or a worker index (default all)
  --signal=SIG  first signal (default TERM)
USAGE
  common_usage
}

WORKER="all"
SIGNAL="TERM"
while [[ $# -gt 0 ]]; do
  if parse_common "$@"; then shift "$OPTSHIFT"; continue; fi
  case "$1" in
    --worker|--worker=*) take_value "$@"; WORKER="$OPTVAL" ;;
    --signal|--signal=*) take_value "$@"; SIGNAL="${OPTVAL#SIG}" ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift "$OPTSHIFT"
done

require_tpu_flags
[[ "$WORKER" == all || "$WORKER" =~ ^[0-9]+$ ]] || die "--worker must be all or an index"
[[ "$SIGNAL" =~ ^[A-Z0-9]+$ ]] || die "bad --signal ${SIGNAL}"
tpu_ssh "$WORKER" "$(free_tpu_snippet "$SIGNAL")"
