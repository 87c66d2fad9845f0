"""muse_jax: a JAX/Flax trainer for Muse (masked generative transformers for text-to-image).

Extras pick JAX's accelerator build (the version matches requirements.txt's jax pin):
  pip install -e .[cuda]   NVIDIA GPUs: jax[cuda12] (CUDA, cuDNN and NCCL come as pip wheels)
  pip install -e .[tpu]    Cloud TPU VMs: jax[tpu] (libtpu)
Without an extra, JAX runs on CPU. One more extra adds TensorFlow (requirements-tf.txt):
  pip install -e .[tf]     the precompute sources data.source=tfds and tfrecord, the training
                           reader data.reader=tf and TFDS caption sets; the default grain
                           reader and the other sources do not need it
Extras combine: pip install -e ".[cuda,tf]".
"""
from setuptools import find_packages, setup


def read_requirements(path: str) -> list[str]:
  with open(path) as f:
    return [l.strip() for l in f if l.strip() and not l.startswith("#")]


requirements = read_requirements("requirements.txt")
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
        "tf": read_requirements("requirements-tf.txt"),
    },
)
