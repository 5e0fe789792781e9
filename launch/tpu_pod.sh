#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: every worker runs the same command and
# jax.distributed.initialize() finds the others by itself.
#
#   launch/tpu_pod.sh --tpu=ov2-v4-512 --zone=us-central2-b [--project=P] [--setup] [--dry-run] -- \
#       --config=configs/openvision2.py:L/14,stage=pretrain --workdir=gs://bucket/ov2-L14 \
#       --config.data.path=gs://bucket/recap-v2/train
#
# --setup first clones/updates the repo at $REPO_URL (default: this checkout's
# origin) into ~/openvision2 on every worker and installs it with the [tpu,gcs] extras.
# --dry-run prints the gcloud commands instead of running them.
set -euo pipefail
tpu="" zone="" project="" setup=0 dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu=*) tpu="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --setup) setup=1 ;;
    --dry-run) dry=1 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (train flags go after --)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$tpu" && -n "$zone" ]] || { echo "usage: $0 --tpu=NAME --zone=ZONE [--project=P] [--setup] [--dry-run] -- TRAIN_FLAGS" >&2; exit 2; }
repo_url=${REPO_URL:-$(git config --get remote.origin.url 2>/dev/null || echo "")}
train_flags=$(printf ' %q' "$@")
gcloud=(gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all)
[[ -n "$project" ]] && gcloud+=(--project="$project")

run() {
  if [[ $dry == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
if [[ $setup == 1 ]]; then
  [[ -n "$repo_url" ]] || { echo "set REPO_URL for --setup" >&2; exit 2; }
  run "${gcloud[@]}" --command="if [ -d ~/openvision2 ]; then git -C ~/openvision2 pull --ff-only; else git clone $repo_url ~/openvision2; fi && cd ~/openvision2 && python3 -m venv ~/ov2env && ~/ov2env/bin/pip install -q -e '.[tpu,gcs]'"
fi
run "${gcloud[@]}" --command="cd ~/openvision2 && ~/ov2env/bin/python -m openvision2.train${train_flags}"
