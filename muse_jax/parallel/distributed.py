"""Multi-process set-up and host-to-global-array conversion.

`initialize` calls `jax.distributed.initialize` when a run spans several processes, and on
every Cloud TPU VM:
- a coordinator address is given (--coordinator_address or JAX_COORDINATOR_ADDRESS); the
  process index may come from --process_id or, in a Kubernetes Indexed Job / JobSet pod, from
  JOB_COMPLETION_INDEX;
- SLURM with more than one task. One task per GPU (`--ntasks-per-node=<GPUs>`): JAX gives
  each process the GPU numbered SLURM_LOCALID. One task per node, or tasks that SLURM already
  bound to their own GPUs: each process uses every GPU it can see (JAX's own SLURM detection
  would restrict it to one);
- a Cloud TPU VM (GCE: worker list from the metadata server; GKE: TPU_WORKER_HOSTNAMES;
  multislice: MEGASCALE_*): always, so that a pod's processes find each other (JAX reads the
  GCE worker list only inside `jax.distributed.initialize`). A single-host VM runs as one
  process.
Call it before any other JAX call that touches devices.

A process that dies (SIGKILL, a lost node) stops sending heartbeats: after `heartbeat_timeout`
seconds JAX's coordination service tells every other process, and JAX ends each of them with
SIGABRT (exit status 134) and the log line "Terminating process because the JAX distributed
service detected fatal errors ... another task died", instead of leaving them waiting in a
collective.
"""
from __future__ import annotations

import logging
import os
import re

import jax
import numpy as np

log = logging.getLogger(__name__)

HEARTBEAT_TIMEOUT = 60  # seconds; JAX's default is 100


def _slurm_tasks_per_node() -> int:
  """Tasks of this step on the first node: SLURM_STEP_TASKS_PER_NODE looks like '8(x2)' or
  '2,1'."""
  for var in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"):
    m = re.match(r"\d+", os.environ.get(var, ""))
    if m:
      return int(m.group())
  return 1


def _slurm_process_per_node() -> bool:
  """True when each SLURM task should use all the GPUs it sees: one task per node, or
  tasks that SLURM bound to fewer GPUs than there are tasks on the node (--gpus-per-task)."""
  per_node = _slurm_tasks_per_node()
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  return per_node == 1 or (visible is not None and len(visible.split(",")) < per_node)


def _slurm_args() -> dict | None:
  """jax.distributed.initialize arguments for a multi-task SLURM step, or None."""
  if int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in os.environ:
    return None
  if not _slurm_process_per_node():
    return {}  # JAX's detection: one GPU per task, SLURM_LOCALID
  from jax._src.clusters.slurm_cluster import SlurmCluster
  port = os.environ.get("JAX_COORDINATOR_PORT")
  return dict(coordinator_address=SlurmCluster.get_coordinator_address(None, port),
              num_processes=SlurmCluster.get_process_count(),
              process_id=SlurmCluster.get_process_id(),
              cluster_detection_method="deactivate")  # all visible devices


def _on_cloud_tpu_vm() -> bool:
  from jax._src import cloud_tpu_init
  return cloud_tpu_init.running_in_cloud_tpu_vm


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, cpu_collectives: str | None = None,
               heartbeat_timeout: int = HEARTBEAT_TIMEOUT) -> bool:
  """Returns True if jax.distributed was initialised."""
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  timeouts = dict(heartbeat_timeout_seconds=int(heartbeat_timeout))
  if address:
    if process_id is None and "JOB_COMPLETION_INDEX" in os.environ:
      process_id = int(os.environ["JOB_COMPLETION_INDEX"])
    jax.distributed.initialize(address, num_processes=num_processes, process_id=process_id,
                               **timeouts)
  elif (slurm := _slurm_args()) is not None:
    jax.distributed.initialize(**slurm, **timeouts)
  elif _on_cloud_tpu_vm():
    try:
      jax.distributed.initialize(**timeouts)
    except ValueError as e:  # no TPU cluster found (e.g. no metadata server): one process
      log.info("Cloud TPU VM without a TPU cluster (%s): running as one process", e)
      return False
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
  flags.DEFINE_integer("heartbeat_timeout", HEARTBEAT_TIMEOUT,
                       "Multi-process: seconds without heartbeats after which a process is "
                       "taken for dead and every other process exits (status 134).")


def initialize_from_flags() -> bool:
  from absl import flags
  f = flags.FLAGS
  return initialize(f.coordinator_address, f.num_processes, f.process_id, f.cpu_collectives,
                    f.heartbeat_timeout)


def global_batch(local: dict[str, np.ndarray], shardings: dict) -> dict[str, jax.Array]:
  """Process-local numpy rows -> global jax.Arrays laid out by `shardings` (batch dim 0)."""
  return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v))
          for k, v in local.items()}
