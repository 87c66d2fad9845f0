# muse_jax image for GPU clusters (GKE JobSet, SLURM through pyxis/enroot) and, with build
# arguments, for TPU VMs and GKE TPU node pools:
#   docker build -t REGISTRY/muse_jax:TAG .                                       # NVIDIA GPUs
#   docker build --build-arg BASE=ubuntu:24.04 --build-arg ACCEL=tpu -t REGISTRY/muse_jax:tpu .
# --build-arg TF=1 adds TensorFlow (requirements-tf.txt, the `tf` extra), which only the tfds and
# tfrecord precompute sources, the data.reader=tf reader and TFDS caption sets need.
# The repository is at /opt/muse_jax (the working directory, so --config=configs/... works) and
# its virtual environment is first on PATH. CUDA, cuDNN and NCCL come from the jax[cuda12] pip
# wheels; the base image's CUDA version is the one the host's NVIDIA driver must support (the
# container runtime checks it).
ARG BASE=nvidia/cuda:12.8.1-base-ubuntu24.04
FROM ${BASE}
ARG ACCEL=cuda
ARG TF=0

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Ubuntu 24.04's python3 is 3.12, which muse_jax needs. Distribution packages follow the base
# image's release; the Python stack is pinned in requirements.txt.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /opt/muse_jax

# Dependencies first, so that a code change does not reinstall them.
# jax[cuda12] or jax[tpu] at requirements.txt's jax version, as setup.py's extras; with TF=1
# TensorFlow in the same pip run, so that one resolver picks every version.
COPY requirements.txt requirements-tf.txt ./
RUN case "${ACCEL}" in cuda) extra=cuda12 ;; tpu) extra=tpu ;; \
      *) echo "ACCEL must be cuda or tpu, not ${ACCEL}" >&2; exit 1 ;; esac \
    && case "${TF}" in 0) set -- ;; 1) set -- -r requirements-tf.txt ;; \
      *) echo "TF must be 0 or 1, not ${TF}" >&2; exit 1 ;; esac \
    && pip install -r requirements.txt "$@" \
      "jax[${extra}]$(sed -n 's/^jax==/==/p' requirements.txt)"

COPY . .
RUN pip install --no-deps -e . && python -c "import muse_jax.train"

CMD ["python", "-m", "muse_jax.train", "--help"]
