"""The start banner: what a training run runs on, printed once (process 0) before any step.

A GPU or TPU machine whose JAX is the CPU build trains, slowly, on the host CPU; so does a
multi-host job that saw fewer devices than it was given. The banner names the platform, device
kind and counts, processes, mesh, parameter count, batch split and workdir, so either is seen at
once; `unused_accelerator` adds a warning when JAX runs on CPU next to visible accelerators.
"""
from __future__ import annotations

import glob
import os

import jax
from jax.sharding import Mesh

from muse_jax.parallel.mesh import data_parallel_size


def _count(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))


def unused_accelerator(platform: str, dev: str = "/dev") -> str | None:
  """A warning when JAX runs on CPU although the machine shows NVIDIA GPUs or TPU chips."""
  if platform != "cpu":
    return None
  if glob.glob(os.path.join(dev, "nvidia[0-9]*")):
    return ("this machine has NVIDIA GPUs but JAX runs on CPU: install the GPU build "
            "(pip install -e .[cuda], or make install ACCEL=cuda)")
  if glob.glob(os.path.join(dev, "accel[0-9]*")) or glob.glob(os.path.join(dev, "vfio", "[0-9]*")):
    return ("this machine has TPU chips but JAX runs on CPU: install the TPU build "
            "(pip install -e .[tpu], or make install ACCEL=tpu)")
  return None


def run_banner(config, mesh: Mesh, abstract_state, workdir: str) -> str:
  """The banner's lines for a run of `config` on `mesh` (`abstract_state`: the train state's
  shapes, e.g. from jax.eval_shape)."""
  devices = mesh.devices.flat
  first = next(iter(devices))
  platform = first.platform
  kinds = sorted({d.device_kind for d in mesh.devices.flat})
  n, procs = mesh.devices.size, jax.process_count()
  params = _count(abstract_state.params)
  extra = ""
  if getattr(abstract_state, "disc_params", None) is not None:
    extra = f" (+ {_count(abstract_state.disc_params):,} discriminator)"
  b, accum = int(config.train.batch_size), int(config.train.grad_accum)
  dp = data_parallel_size(mesh)
  micro = f", in {accum} microbatches of {b // accum // dp}" if accum > 1 else ""
  shape = " x ".join(f"{a}={s}" for a, s in mesh.shape.items())
  lines = [
      f"muse_jax: training stage {config.stage!r} in {workdir}",
      f"  platform  {platform}: {n} x {', '.join(kinds)} ({n // procs} per process), "
      f"{procs} process{'es' if procs > 1 else ''}, jax {jax.__version__}",
      f"  mesh      {shape} (axes {', '.join(mesh.axis_names)})",
      f"  params    {params:,}{extra}",
      f"  batch     {b} global = {b // dp} per device x {dp} data-parallel (data x fsdp)"
      f"{micro}; {b // procs} per process",
  ]
  warning = unused_accelerator(platform)
  if warning:
    lines.append(f"  warning   {warning}")
  return "\n".join(lines)
