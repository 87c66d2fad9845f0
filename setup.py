"""muse_jax: a JAX/Flax trainer for Muse (masked generative transformers for text-to-image)."""
from setuptools import find_packages, setup

with open("requirements.txt") as f:
  requirements = [l.strip() for l in f if l.strip() and not l.startswith("#")]

setup(
    name="muse_jax",
    version="0.1.0",
    description="JAX/Flax trainer for Muse text-to-image models",
    packages=find_packages(include=["muse_jax", "muse_jax.*"]),
    python_requires=">=3.12",
    install_requires=requirements,
)
