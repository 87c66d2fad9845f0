"""muse_jax: a JAX/Flax trainer for Muse (masked generative transformers for text-to-image).

Extras pick JAX's accelerator build (the version matches requirements.txt's jax pin):
  pip install -e .[cuda]   NVIDIA GPUs: jax[cuda12] (CUDA, cuDNN and NCCL come as pip wheels)
  pip install -e .[tpu]    Cloud TPU VMs: jax[tpu] (libtpu)
Without an extra, JAX runs on CPU.
"""
from setuptools import find_packages, setup

with open("requirements.txt") as f:
  requirements = [l.strip() for l in f if l.strip() and not l.startswith("#")]

JAX = next(r for r in requirements if r.startswith("jax=="))  # the one pinned version

setup(
    name="muse_jax",
    version="0.1.0",
    description="JAX/Flax trainer for Muse text-to-image models",
    packages=find_packages(include=["muse_jax", "muse_jax.*"]),
    python_requires=">=3.12",
    install_requires=requirements,
    extras_require={
        "cuda": [JAX.replace("jax==", "jax[cuda12]==")],
        "tpu": [JAX.replace("jax==", "jax[tpu]==")],
    },
)
