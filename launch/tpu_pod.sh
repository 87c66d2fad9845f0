#!/bin/bash
# Cloud TPU VM launcher: the same training command on every worker of a slice, detached from
# this terminal (setsid nohup), each worker logging to ~/muse_jax/logs/RUN.log.
#
#   launch/tpu_pod.sh create  TPU ZONE v5p-64 [gcloud flags, e.g. --spot]
#   launch/tpu_pod.sh install TPU ZONE              # this checkout's HEAD + jax[tpu] on all workers
#   TF=1 launch/tpu_pod.sh install TPU ZONE         # the same, plus TensorFlow (the `tf` extra)
#   launch/tpu_pod.sh start   TPU ZONE RUN CONFIG gs://BUCKET/runs/RUN [--config.x=y ...]
#   launch/tpu_pod.sh logs    TPU ZONE RUN [WORKER]   # follow one worker's log (default 0)
#   launch/tpu_pod.sh status  TPU ZONE RUN            # running or not, last line, every worker
#   launch/tpu_pod.sh stop    TPU ZONE RUN            # SIGTERM: checkpoint, exit 143
#   DRY_RUN=1 launch/tpu_pod.sh ...                   # print the gcloud commands, run nothing
#
# Every worker runs one process; jax.distributed finds the slice's workers itself on TPU VMs.
# Checkpoints go to the gs:// workdir, so after a preemption (or stop) `start` with the same
# RUN, CONFIG and WORKDIR resumes from the newest checkpoint, on this slice or a new one.
# TPU_RUNTIME overrides the TPU VM image that `create` picks from the accelerator type.
set -euo pipefail
usage() { sed -n '5,12p' "$0" | sed 's/^# *//' >&2; exit 2; }
[[ $# -ge 3 ]] || usage
CMD=$1; TPU=$2; ZONE=$3; shift 3
# shellcheck disable=SC2088  # the workers' shells expand the ~
REMOTE_DIR='~/muse_jax'

run() {
  if [[ -n ${DRY_RUN:-} ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
ssh_workers() {  # WORKER REMOTE_COMMAND
  run gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker="$1" --command="$2"
}
run_name() {
  [[ $1 =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "error: RUN must be letters, digits, _ . -" >&2; exit 2; }
}

# Workers, chips and JAX processes of a slice: v4-N and v5p-N count TensorCores (2 per chip),
# 4 chips per worker (Cloud TPU's v5p table: v5p-64 = 2x4x4 = 32 chips on 8 hosts).
describe() {
  local gen=${1%-*} n=${1##*-}
  case $gen in
    v4|v5p)
      local chips=$((n / 2)); local hosts=$(( chips < 4 ? 1 : chips / 4 ))
      echo "# $1: $chips chips on $hosts worker(s) of $((chips / hosts)) chips;" \
           "$hosts JAX processes, jax.device_count() = $chips" ;;
    *) echo "# $1: see the Cloud TPU docs for its workers and chips" ;;
  esac
}
alive() {  # RUN -> a remote test: its process (logs/RUN.pid) runs and is not a zombie
  echo "p=\$(cat logs/$1.pid 2>/dev/null) && st=\$(ps -o stat= -p \"\$p\") \
&& [ \"\${st#Z}\" = \"\$st\" ]"
}
runtime() {
  case ${1%-*} in
    v5p) echo v2-alpha-tpuv5 ;;
    v5litepod) echo v2-alpha-tpuv5-lite ;;
    v6e) echo v2-alpha-tpuv6e ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

case $CMD in
  create)
    [[ $# -ge 1 ]] || usage
    ACCEL=$1; shift
    describe "$ACCEL"
    run gcloud compute tpus tpu-vm create "$TPU" --zone="$ZONE" --accelerator-type="$ACCEL" \
      --version="${TPU_RUNTIME:-$(runtime "$ACCEL")}" "$@"
    ;;
  install)
    # TPU VM images ship an older Python; uv provides 3.12 where python3.12 is missing.
    # TensorFlow only with TF=1: the tfds and tfrecord precompute sources and data.reader=tf.
    extras=tpu
    if [[ ${TF:-0} == 1 ]]; then extras=tpu,tf; fi
    archive=${TMPDIR:-/tmp}/muse_jax_$$.tar.gz
    run git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$archive" HEAD
    run gcloud compute tpus tpu-vm scp "$archive" "$TPU:muse_jax.tar.gz" --zone="$ZONE" --worker=all
    ssh_workers all "set -e; mkdir -p $REMOTE_DIR && tar -xzf muse_jax.tar.gz -C $REMOTE_DIR \
&& cd $REMOTE_DIR && PY=\$(command -v python3.12 || { python3 -m pip install -q --user uv \
&& ~/.local/bin/uv python install 3.12 >/dev/null && ~/.local/bin/uv python find 3.12; }) \
&& \$PY -m venv .venv && .venv/bin/pip install -q -r requirements.txt -e '.[$extras]' \
&& .venv/bin/python -c 'import jax; print(jax.process_index(), jax.devices()[0].device_kind)'"
    [[ -n ${DRY_RUN:-} ]] || rm -f "$archive"
    ;;
  start)
    [[ $# -ge 3 ]] || usage
    RUN=$1; CONFIG=$2; WORKDIR=$3; shift 3
    run_name "$RUN"
    args=$(printf ' %q' --config="$CONFIG" --workdir="$WORKDIR" "$@")
    log="logs/$RUN.log"; pidf="logs/$RUN.pid"
    ssh_workers all "cd $REMOTE_DIR && mkdir -p logs && if $(alive "$RUN"); then \
echo \"\$(hostname): $RUN is already running\"; exit 1; fi; \
setsid nohup .venv/bin/python -m muse_jax.train$args >> $log 2>&1 < /dev/null & \
echo \$! > $pidf; echo \"\$(hostname): started $RUN (pid \$!), log $REMOTE_DIR/$log\""
    ;;
  logs)
    [[ $# -ge 1 ]] || usage
    run_name "$1"
    ssh_workers "${2:-0}" "tail -n 200 -F $REMOTE_DIR/logs/$1.log"
    ;;
  status)
    [[ $# -ge 1 ]] || usage
    run_name "$1"
    ssh_workers all "cd $REMOTE_DIR && if $(alive "$1"); then s=running; else s=stopped; fi; \
echo \"\$(hostname): $1 \$s: \$(tail -n 1 logs/$1.log)\""
    ;;
  stop)
    [[ $# -ge 1 ]] || usage
    run_name "$1"
    ssh_workers all "kill -TERM \$(cat $REMOTE_DIR/logs/$1.pid) && echo \"\$(hostname): \
SIGTERM sent; $1 checkpoints and exits 143\""
    ;;
  *) usage ;;
esac
