"""Build the one device mesh from config (`config.mesh`).

Axes are `data`, `fsdp` and `tensor` (in that order; `tensor` innermost so its collectives stay
on the fastest links). One size may be -1, meaning "all remaining devices".
Multi-slice (DCN) runs give `dcn_data` > 1: the data axis is then split across slices.
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

AXES = ("data", "fsdp", "tensor")


class MeshError(ValueError):
  pass


def resolve_axis_sizes(sizes: dict[str, int], num_devices: int) -> dict[str, int]:
  """Replace a single -1 by the remaining device count and check the product."""
  sizes = {a: int(sizes[a]) for a in AXES}
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise MeshError(f"mesh: only one axis may be -1, got {free}; set the others explicitly")
  for a, s in sizes.items():
    if s == 0 or s < -1:
      raise MeshError(f"mesh.{a}={s} is invalid: use a positive size or -1 for 'the rest'")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if num_devices % fixed:
      raise MeshError(f"mesh: {num_devices} devices are not divisible by the fixed axes "
                      f"(product {fixed}); change mesh.{'/'.join(AXES)}")
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise MeshError(
        f"mesh: data*fsdp*tensor = {math.prod(sizes.values())} but there are {num_devices} "
        f"devices; set e.g. --config.mesh.data=-1")
  return sizes


def make_mesh(mesh_config, devices=None, *, whole_slice: bool = False) -> Mesh:
  """The (data, fsdp, tensor) mesh over `devices` (default: all devices). All devices, or
  `whole_slice` ones (a TPU topology's compile-only devices), are laid out on the physical
  interconnect as `mesh_utils` does it; a subset is reshaped in the order given."""
  whole_slice = whole_slice or devices is None or len(devices) == len(jax.devices())
  devices = list(jax.devices() if devices is None else devices)
  sizes = resolve_axis_sizes({a: mesh_config[a] for a in AXES}, len(devices))
  shape = tuple(sizes[a] for a in AXES)
  dcn_data = int(mesh_config.get("dcn_data", 1))
  if dcn_data > 1:
    if sizes["data"] % dcn_data:
      raise MeshError(f"mesh.data={sizes['data']} must be divisible by mesh.dcn_data={dcn_data}")
    ici = (sizes["data"] // dcn_data, sizes["fsdp"], sizes["tensor"])
    arr = mesh_utils.create_hybrid_device_mesh(ici, (dcn_data, 1, 1), devices)
  elif whole_slice:
    try:
      arr = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
      arr = np.asarray(devices).reshape(shape)
  else:
    arr = np.asarray(devices).reshape(shape)
  return Mesh(arr, AXES)


def data_parallel_size(mesh: Mesh) -> int:
  """How many ways the batch is split (data x fsdp)."""
  return mesh.shape["data"] * mesh.shape["fsdp"]
