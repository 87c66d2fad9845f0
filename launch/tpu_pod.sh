#!/bin/bash
# Cloud TPU pod launcher: run the same command on every worker of a TPU VM slice.
#   launch/tpu_pod.sh TPU_NAME ZONE configs/base_3b.py gs://bucket/runs/base3b \
#       --config.mesh.fsdp=-1 --config.mesh.data=1 --config.data.path=gs://bucket/shards
# Assumes the repo is checked out at ~/muse_jax on every worker with `make install` done.
# jax.distributed.initialize() discovers the pod topology (TPU_WORKER_HOSTNAMES), and Orbax
# writes checkpoints to the gs:// workdir; rerun the same command after a preemption.
set -euo pipefail
TPU=${1:?tpu name}; ZONE=${2:?zone}; CONFIG=${3:?config}; WORKDIR=${4:?workdir}; shift 4
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command \
  "cd ~/muse_jax && .venv/bin/python -m muse_jax.train --config=$CONFIG --workdir=$WORKDIR$ARGS"
