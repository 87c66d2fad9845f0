"""Where an evaluation runs: each process's devices as one data-parallel mesh, and the
gathering of per-image results from every process to process 0.

Every batch of the evaluation (`runner`) is split into equal contiguous parts, one per process
(`process_rows`); a process samples and scores only its part. Within a process the rows are
split over its devices along the mesh's `data` axis and every network's parameters are
replicated on them (`local_mesh`, `rows_on`, `replicate`). Sampling and the networks work image
by image, so no program needs data from another device, and none spans processes: processes
meet only in `gather` (the per-image features, embeddings and counts of each batch, to every
process, where process 0 adds them up in caption order) and `broadcast` (the saved progress
that process 0 reads).
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from muse_jax.parallel.mesh import make_mesh


def local_mesh() -> Mesh:
  """This process's devices on the `data` axis (fsdp = tensor = 1)."""
  return make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.local_devices())


def replicate(tree, mesh: Mesh):
  """`tree`'s arrays copied to every device of `mesh` (a process-local mesh)."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def rows_on(mesh: Mesh) -> Callable[[np.ndarray], jax.Array]:
  """x [B, ...] -> a jax.Array with its rows split over `mesh`'s data axis (B must divide)."""
  sharding = NamedSharding(mesh, P("data"))

  def put(x):
    if np.shape(x)[0] % mesh.size:
      raise ValueError(f"{np.shape(x)[0]} rows cannot be split over {mesh.size} devices")
    return jax.device_put(x, sharding)

  return put


def padded_rows(fn: Callable[[np.ndarray], np.ndarray], multiple: int):
  """fn on rows padded to a multiple of `multiple` (copies of the last), result cut back."""

  def call(x, *rest):
    n = np.shape(x)[0]
    pad = -n % multiple
    if pad:
      x = np.concatenate([np.asarray(x), np.repeat(np.asarray(x)[-1:], pad, axis=0)])
      rest = tuple(np.concatenate([np.asarray(r), np.repeat(np.asarray(r)[-1:], pad, axis=0)])
                   for r in rest)
    return fn(x, *rest)[:n]

  return call


def process_rows(batch: Sequence[int]) -> list[int]:
  """This process's contiguous part of a batch of indices (equal parts, in process order)."""
  count = jax.process_count()
  if len(batch) % count:
    raise ValueError(f"a batch of {len(batch)} cannot be split over {count} processes")
  per = len(batch) // count
  return list(batch[jax.process_index() * per:(jax.process_index() + 1) * per])


def is_main() -> bool:
  return jax.process_index() == 0


def gather(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Each process's rows (equal shapes; float32, integer or uint8 arrays) -> every process's
  rows concatenated in process order, on every process."""
  if jax.process_count() == 1:
    return rows
  from jax.experimental import multihost_utils
  return {k: np.asarray(v) for k, v in
          multihost_utils.process_allgather(rows, tiled=True).items()}


def broadcast(value: int) -> int:
  """Process 0's integer, on every process."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def check_batch(batch_size: int) -> None:
  """A batch must split evenly over the processes and over each process's devices."""
  procs, local = jax.process_count(), jax.local_device_count()
  if batch_size % (procs * local):
    raise ValueError(f"--batch_size={batch_size} must be a multiple of the {procs * local} "
                     f"devices ({procs} process(es) x {local}): each device takes an equal "
                     "part of every batch")
