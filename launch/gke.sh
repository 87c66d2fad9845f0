#!/bin/bash
# Render a GKE JobSet from environment variables and apply it (or print it with --dry-run).
#   NAME=muse-base IMAGE=REGISTRY/muse_jax:TAG NUM_NODES=4 CONFIG=configs/base_632m.py \
#     WORKDIR=gs://BUCKET/runs/base632m launch/gke.sh gpu [--dry-run]
#   NAME=muse-3b IMAGE=REGISTRY/muse_jax:tpu NUM_HOSTS=8 TPU_TOPOLOGY=2x4x4 \
#     CONFIG=configs/base_3b.py WORKDIR=gs://BUCKET/runs/base3b launch/gke.sh tpu [--dry-run]
# Optional: ARGS (more train flags), KSA (Kubernetes service account with access to the bucket,
# default "default"), MAX_RESTARTS (20); gpu: GPUS_PER_NODE (8), GPU_TYPE (nvidia-h100-80gb);
# tpu: TPU_ACCELERATOR (tpu-v5p-slice), CHIPS_PER_HOST (4).
# Only the template's ${VARIABLES} are substituted (Kubernetes' $(PROCESS_ID) is kept).
set -euo pipefail
here=$(dirname "$0")
usage() { sed -n '2,9p' "$0" | sed 's/^# *//' >&2; exit 2; }
export ARGS=${ARGS:-} KSA=${KSA:-default} MAX_RESTARTS=${MAX_RESTARTS:-20}
case ${1:-} in
  gpu)
    template=$here/gke_jobset.yaml
    export GPUS_PER_NODE=${GPUS_PER_NODE:-8} GPU_TYPE=${GPU_TYPE:-nvidia-h100-80gb}
    required=(NAME IMAGE NUM_NODES CONFIG WORKDIR)
    numbers=(NUM_NODES GPUS_PER_NODE MAX_RESTARTS) ;;
  tpu)
    template=$here/gke_jobset_tpu.yaml
    export TPU_ACCELERATOR=${TPU_ACCELERATOR:-tpu-v5p-slice} CHIPS_PER_HOST=${CHIPS_PER_HOST:-4}
    required=(NAME IMAGE NUM_HOSTS TPU_TOPOLOGY CONFIG WORKDIR)
    numbers=(NUM_HOSTS CHIPS_PER_HOST MAX_RESTARTS) ;;
  *) usage ;;
esac
for v in "${required[@]}"; do
  [[ -n ${!v:-} ]] || {
    echo "error: set $v (launch/gke.sh $1 needs ${required[*]})" >&2; exit 2; }
done
for v in "${numbers[@]}"; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "error: $v=${!v} must be a positive integer" >&2; exit 2; }
done
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || {
  echo "error: NAME=$NAME must be lower-case letters, digits and '-' (a DNS label)" >&2; exit 2; }
# Substitute in bash, not envsubst (not on every laptop): each ${VAR} of the template.
manifest=$(<"$template")
# shellcheck disable=SC2016  # the literal ${VAR} patterns of the template
for v in $(grep -o '\${[A-Z_]*}' "$template" | tr -d '${}' | sort -u); do
  value=${!v?"the template uses \${$v}, which launch/gke.sh does not set"}
  manifest=${manifest//"\${$v}"/"$value"}  # quoted: no pattern or & in the value is special
done
if [[ ${2:-} == --dry-run ]]; then
  echo "$manifest"
else
  echo "$manifest" | kubectl apply -f -
  echo "follow: kubectl logs -f -l jobset.sigs.k8s.io/jobset-name=$NAME --max-log-requests=64"
fi
