"""Multi-process set-up and host-to-global-array conversion.

`initialize` calls `jax.distributed.initialize` when a run spans several processes: when a
coordinator address is given (flags or JAX_COORDINATOR_ADDRESS), or when a cluster JAX knows
(SLURM, Cloud TPU pods, ...) announces more than one process. Call it before any other JAX
call that touches devices.
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np

log = logging.getLogger(__name__)


def _cluster_says_multiprocess() -> bool:
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
    return True
  return False


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, cpu_collectives: str | None = None) -> bool:
  """Returns True if jax.distributed was initialised."""
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  if address:
    jax.distributed.initialize(address, num_processes=num_processes, process_id=process_id)
  elif _cluster_says_multiprocess():
    jax.distributed.initialize()
  else:
    return False
  log.info("jax.distributed: process %d of %d, %d local / %d global devices",
           jax.process_index(), jax.process_count(), jax.local_device_count(),
           jax.device_count())
  return True


def define_flags() -> None:
  """The multi-process flags shared by the entry points (train, precompute, demo)."""
  from absl import flags
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
  flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
  flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
  flags.DEFINE_string("cpu_collectives", None,
                      "CPU collectives for multi-process CPU runs (gloo).")


def initialize_from_flags() -> bool:
  from absl import flags
  f = flags.FLAGS
  return initialize(f.coordinator_address, f.num_processes, f.process_id, f.cpu_collectives)


def global_batch(local: dict[str, np.ndarray], shardings: dict) -> dict[str, jax.Array]:
  """Process-local numpy rows -> global jax.Arrays laid out by `shardings` (batch dim 0)."""
  return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v))
          for k, v in local.items()}
