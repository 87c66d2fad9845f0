"""`distributed.initialize` in each cluster environment, faked on CPU: two processes get the
environment variables (and, for GCE TPU VMs, a metadata server on localhost) that SLURM, a
Kubernetes Indexed Job / JobSet or a Cloud TPU VM gives them, and each reports the process
count and index, its devices, and the GPUs JAX would let it use (`jax_cuda_visible_devices`).

All environments' processes start together (each pair over gloo on its own port), so the
test costs about one JAX start-up per process on the machine's cores.
"""
from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from tests.xla_env import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = r"""
import json, os, sys
import jax
if os.environ.pop("FAKE_GCE_TPU_VM", None):
  # JAX sets this on a machine without TPU chips; a GCE TPU VM does not have it.
  os.environ.pop("TPU_SKIP_MDS_QUERY", None)
from jax._src import xla_bridge
from muse_jax.parallel import distributed
num = int(sys.argv[1]) if len(sys.argv) > 1 else None
ok = distributed.initialize(num_processes=num, cpu_collectives="gloo")
print(json.dumps(dict(initialized=ok, index=jax.process_index(), count=jax.process_count(),
                      local=jax.local_device_count(), total=jax.device_count(),
                      gpus=xla_bridge.CUDA_VISIBLE_DEVICES.value)))
"""


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def metadata_server(attributes: dict) -> str:
  """A GCE metadata server on localhost serving instance attributes; returns host:port."""
  class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
      prefix = "/computeMetadata/v1/instance/attributes/"
      key = self.path[len(prefix):] if self.path.startswith(prefix) else None
      ok = key in attributes and self.headers.get("Metadata-Flavor") == "Google"
      body = (attributes[key] if ok else "not found").encode()
      self.send_response(200 if ok else 404)
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return f"127.0.0.1:{server.server_address[1]}"


def base_env() -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "TPU_", "MEGASCALE_", "JAX_", "JOB_COMPLETION"))}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
             XLA_FLAGS=xla_flags(3))
  return env


def environments() -> dict[str, list[tuple[dict, list[str]]]]:
  """name -> per process (extra environment variables, script arguments)."""
  envs = {}
  port = str(free_port())
  slurm = dict(SLURM_JOB_ID="4242", SLURM_NTASKS="2", JAX_COORDINATOR_PORT=port)
  # sbatch --nodes=1 --ntasks-per-node=2 --gpus-per-node=2: one process per GPU.
  envs["slurm_task_per_gpu"] = [
      (dict(slurm, SLURM_STEP_NODELIST="localhost", SLURM_STEP_TASKS_PER_NODE="2",
            SLURM_PROCID=str(i), SLURM_LOCALID=str(i), CUDA_VISIBLE_DEVICES="0,1"), [])
      for i in range(2)]
  port = str(free_port())
  slurm = dict(slurm, JAX_COORDINATOR_PORT=port)
  # sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=8: one process per node.
  envs["slurm_task_per_node"] = [
      (dict(slurm, SLURM_STEP_NODELIST="localhost,localhost",
            SLURM_STEP_TASKS_PER_NODE="1(x2)", SLURM_PROCID=str(i), SLURM_LOCALID="0",
            CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7"), []) for i in range(2)]
  # A GKE Indexed Job / JobSet pod (GPU): the coordinator is pod 0, the index comes from
  # JOB_COMPLETION_INDEX.
  address = f"localhost:{free_port()}"
  envs["gke_indexed_job"] = [
      (dict(JAX_COORDINATOR_ADDRESS=address, JOB_COMPLETION_INDEX=str(i)), ["2"])
      for i in range(2)]
  # GKE TPU: a JobSet pod with the variables GKE's TPU webhook sets.
  tpu = dict(JAX_FORCE_TPU_INIT="1", JAX_COORDINATOR_PORT=str(free_port()))
  envs["gke_tpu_slice"] = [
      (dict(tpu, TPU_WORKER_HOSTNAMES="localhost,localhost", TPU_WORKER_ID=str(i),
            MEGASCALE_NUM_SLICES="1", MEGASCALE_SLICE_ID="0",
            MEGASCALE_COORDINATOR_ADDRESS="localhost"), []) for i in range(2)]
  # A GCE TPU VM pod slice: two workers, their list on the metadata server.
  tpu = dict(tpu, JAX_COORDINATOR_PORT=str(free_port()), FAKE_GCE_TPU_VM="1")
  envs["gce_tpu_pod"] = [
      (dict(tpu, GCE_METADATA_IP=metadata_server({
          "agent-worker-number": str(i), "worker-network-endpoints": "localhost,localhost",
          "tpu-env": "ACCELERATOR_TYPE: 'v5p-16'"})), []) for i in range(2)]
  # GCE multislice: two single-host slices (MEGASCALE_* in the metadata's tpu-env).
  tpu = dict(tpu, JAX_COORDINATOR_PORT=str(free_port()))
  envs["gce_tpu_multislice"] = [
      (dict(tpu, GCE_METADATA_IP=metadata_server({
          "agent-worker-number": "0", "worker-network-endpoints": "localhost",
          "tpu-env": (f"MEGASCALE_NUM_SLICES: '2'\nMEGASCALE_SLICE_ID: '{i}'\n"
                      "MEGASCALE_COORDINATOR_ADDRESS: 'localhost'")})), [])
      for i in range(2)]
  return envs


@pytest.fixture(scope="module")
def reports() -> dict[str, list[dict]]:
  envs = environments()
  procs = {name: [subprocess.Popen([sys.executable, "-c", SCRIPT, *args], cwd=REPO,
                                   env={**base_env(), **extra}, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
                  for extra, args in per_process]
           for name, per_process in envs.items()}
  out = {}
  for name, ps in procs.items():
    out[name] = []
    for p in ps:
      try:
        stdout, stderr = p.communicate(timeout=300)
      except subprocess.TimeoutExpired:
        for q in (q for qs in procs.values() for q in qs):
          q.kill()
        raise
      assert p.returncode == 0, f"{name}: {stderr[-3000:]}"
      out[name].append(json.loads(stdout.strip().splitlines()[-1]))
  return out


@pytest.mark.parametrize("name", ["slurm_task_per_gpu", "slurm_task_per_node",
                                  "gke_indexed_job", "gke_tpu_slice", "gce_tpu_pod",
                                  "gce_tpu_multislice"])
def test_two_processes_find_each_other(reports, name):
  got = reports[name]
  assert [r["initialized"] for r in got] == [True, True]
  assert [(r["index"], r["count"]) for r in got] == [(0, 2), (1, 2)]
  assert [(r["local"], r["total"]) for r in got] == [(3, 6), (3, 6)]


def test_slurm_gives_each_task_its_gpu_or_every_gpu_of_its_node(reports):
  assert [r["gpus"] for r in reports["slurm_task_per_gpu"]] == ["0", "1"]
  assert [r["gpus"] for r in reports["slurm_task_per_node"]] == ["all", "all"]


def test_a_single_host_tpu_vm_without_a_cluster_runs_as_one_process():
  env = {**base_env(), "JAX_FORCE_TPU_INIT": "1", "TPU_SKIP_MDS_QUERY": "1"}
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (got["initialized"], got["count"]) == (False, 1)
