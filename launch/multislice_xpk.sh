#!/usr/bin/env bash
# Train across several TPU slices (multislice) with XPK on GKE. The mesh gets a
# dcn_data axis of size --num-slices (data parallel over the data-centre network);
# the other axes stay inside a slice.
#
#   launch/multislice_xpk.sh --cluster=C --tpu-type=v5p-256 --num-slices=2 [--workload=NAME] \
#       [--docker-image=IMG] [--dry-run] -- --config=configs/openvision2.py:L/14 --workdir=gs://bucket/run
#
# The image must contain this repository installed with the [tpu] extra
# (e.g. built from python:3.11 with `pip install -e .[tpu,gcs]`).
set -euo pipefail
cluster="" tpu_type="" slices=1 workload="ov2-$(date +%Y%m%d-%H%M%S)" image="${DOCKER_IMAGE:-}" dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cluster=*) cluster="${1#*=}" ;;
    --tpu-type=*) tpu_type="${1#*=}" ;;
    --num-slices=*) slices="${1#*=}" ;;
    --workload=*) workload="${1#*=}" ;;
    --docker-image=*) image="${1#*=}" ;;
    --dry-run) dry=1 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (train flags go after --)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$cluster" && -n "$tpu_type" ]] || { echo "usage: $0 --cluster=C --tpu-type=T --num-slices=N [--workload=W] [--docker-image=I] [--dry-run] -- TRAIN_FLAGS" >&2; exit 2; }
train_flags=$(printf ' %q' "$@")
cmd=(xpk workload create --cluster="$cluster" --workload="$workload" --tpu-type="$tpu_type"
     --num-slices="$slices"
     --command="python -m openvision2.train${train_flags} --config.mesh.dcn_data=$slices")
[[ -n "$image" ]] && cmd+=(--docker-image="$image")
if [[ $dry == 1 ]]; then printf '%q ' "${cmd[@]}"; echo; else "${cmd[@]}"; fi
