#!/usr/bin/env bash
# Create a Cloud TPU VM pod slice through a queued resource.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_create.sh --name=NAME --zone=ZONE [options]

Requests a TPU VM slice with `gcloud compute tpus queued-resources create`
(queued-resource id = node id = NAME) and, with --wait, polls until it is
ACTIVE.

Options:
  --accelerator_type=TYPE  v4-32, v5litepod-64, v5p-64, v6e-64, ... (default v5litepod-64)
  --runtime_version=VER    TPU software image; default from the accelerator:
                           v4 -> tpu-ubuntu2204-base, v5litepod -> v2-alpha-tpuv5-lite,
                           v5p -> v2-alpha-tpuv5, v6e -> v2-alpha-tpuv6e
  --spot                   spot capacity (cheap, preemptible)          [default]
  --reserved               use the project's reservation
  --on_demand              neither --spot nor --reserved
  --valid_until=DURATION   give up if not provisioned within DURATION (e.g. 6h)
  --network=NET, --subnetwork=SUBNET, --service_account=SA   passed through
  --internal_ips           no external IPs on the workers (then pass
                           --ssh_via=iap, or internal from inside the VPC, to
                           the other scripts, or export TPU_SSH_VIA=iap)
  --wait                   poll until the queued resource is ACTIVE (or fails)
  --poll_s=SECONDS         polling interval for --wait (default 60)

Example:
  launch/tpu_create.sh --name=trm-v5e --zone=us-west4-a \
      --accelerator_type=v5litepod-64 --spot --wait
USAGE
  common_usage
}

ACCEL="v5litepod-64"
RUNTIME=""
CAPACITY="spot"
VALID_UNTIL=""
NETWORK=""
SUBNETWORK=""
SERVICE_ACCOUNT=""
INTERNAL_IPS=0
WAIT=0
POLL_S=60

while [[ $# -gt 0 ]]; do
  if parse_common "$@"; then shift "$OPTSHIFT"; continue; fi
  case "$1" in
    --accelerator_type|--accelerator_type=*) take_value "$@"; ACCEL="$OPTVAL" ;;
    --runtime_version|--runtime_version=*) take_value "$@"; RUNTIME="$OPTVAL" ;;
    --spot) CAPACITY="spot"; OPTSHIFT=1 ;;
    --reserved) CAPACITY="reserved"; OPTSHIFT=1 ;;
    --on_demand) CAPACITY="on_demand"; OPTSHIFT=1 ;;
    --valid_until|--valid_until=*) take_value "$@"; VALID_UNTIL="$OPTVAL" ;;
    --network|--network=*) take_value "$@"; NETWORK="$OPTVAL" ;;
    --subnetwork|--subnetwork=*) take_value "$@"; SUBNETWORK="$OPTVAL" ;;
    --service_account|--service_account=*) take_value "$@"; SERVICE_ACCOUNT="$OPTVAL" ;;
    --internal_ips) INTERNAL_IPS=1; OPTSHIFT=1 ;;
    --wait) WAIT=1; OPTSHIFT=1 ;;
    --poll_s|--poll_s=*) take_value "$@"; POLL_S="$OPTVAL" ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift "$OPTSHIFT"
done

require_tpu_flags

if [[ -z "$RUNTIME" ]]; then
  case "$ACCEL" in
    v4-*) RUNTIME="tpu-ubuntu2204-base" ;;
    v5litepod-*|v5e-*) RUNTIME="v2-alpha-tpuv5-lite" ;;
    v5p-*) RUNTIME="v2-alpha-tpuv5" ;;
    v6e-*) RUNTIME="v2-alpha-tpuv6e" ;;
    *) die "no default runtime for ${ACCEL}; pass --runtime_version" ;;
  esac
fi

gcloud_location_flags
args=("$GCLOUD" compute tpus queued-resources create "$NAME"
      "--node-id=${NAME}" "${GLOC[@]}"
      "--accelerator-type=${ACCEL}" "--runtime-version=${RUNTIME}")
case "$CAPACITY" in
  spot) args+=(--spot) ;;
  reserved) args+=(--reserved) ;;
  on_demand) ;;
esac
if [[ -n "$VALID_UNTIL" ]]; then args+=("--valid-until-duration=${VALID_UNTIL}"); fi
if [[ -n "$NETWORK" ]]; then args+=("--network=${NETWORK}"); fi
if [[ -n "$SUBNETWORK" ]]; then args+=("--subnetwork=${SUBNETWORK}"); fi
if [[ -n "$SERVICE_ACCOUNT" ]]; then args+=("--service-account=${SERVICE_ACCOUNT}"); fi
if [[ "$INTERNAL_IPS" == 1 ]]; then args+=(--internal-ips); fi
run "${args[@]}"

describe=("$GCLOUD" compute tpus queued-resources describe "$NAME" "${GLOC[@]}"
          "--format=value(state.state)")
if [[ "$WAIT" == 1 ]]; then
  if [[ "$DRY_RUN" == 1 ]]; then
    run "${describe[@]}"
    exit 0
  fi
  while true; do
    state="$("${describe[@]}" || echo UNKNOWN)"
    log "queued resource ${NAME}: ${state}"
    case "$state" in
      ACTIVE) break ;;
      FAILED|SUSPENDED|SUSPENDING) die "queued resource ${NAME} is ${state}" ;;
    esac
    sleep "$POLL_S"
  done
  via=""; if [[ "$INTERNAL_IPS" == 1 ]]; then via=" --ssh_via=iap"; fi
  log "ready; next: launch/tpu_setup.sh --name=${NAME} --zone=${ZONE}${via}"
else
  log "check with: $(shell_join "${describe[@]}")"
fi
