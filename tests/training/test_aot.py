"""Ahead-of-time compilation for TPU topologies (`python -m muse_jax.compile`), with the real
libtpu on this CPU host: targets parse to the slices Cloud TPU provisions; the tiny base stage
compiles on a 2x2 v5e with per-chip memory, collectives and FLOPs; a deliberately over-large
step and a missing libtpu each end in one line and exit status 2.

The compiles run as concurrent subprocesses started once for the module (about 5 s of CPU
each; libtpu is loaded only in them, never in the test process).
"""
import json
import os
import subprocess
import sys

import pytest

from muse_jax.parallel.topology import TopologyError, parse_target
from tests.training.helpers import REPO, cli_env

TINY = ["--config=configs/tiny.py", "--topology=v5e:2x2", "--config.mesh.data=2",
        "--config.mesh.fsdp=2"]
RUNS = {
    "scanned2": TINY,
    "scanned4": TINY + ["--config.model.num_layers=4", "--config.model.remat=full"],
    "sr_unrolled": ["--config=configs/sr_tiny.py", "--topology=v4:2x2x1", "--config.mesh.fsdp=2",
                    "--config.model.scan_layers=False", "--config.model.remat=dots"],
    "too_large": ["--config=configs/base_3b.py", "--topology=v5litepod-4",
                  "--config.train.batch_size=16"],
    "no_libtpu": TINY,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("aot")
  hidden = tmp / "hide" / "libtpu"  # an importable `libtpu` that fails as a missing one does
  hidden.mkdir(parents=True)
  (hidden / "__init__.py").write_text("raise ImportError('no libtpu here')\n")
  # `make install` puts libtpu beside the venv, not on its path (Makefile: LIBTPU).
  libtpu = os.path.join(sys.prefix, "libtpu")
  assert os.path.isdir(os.path.join(libtpu, "libtpu")), f"no libtpu in {libtpu}: run make install"
  procs = {}
  for name, args in RUNS.items():
    env = cli_env()
    if name != "no_libtpu":
      env["PYTHONPATH"] = libtpu + os.pathsep + env["PYTHONPATH"]
    else:
      env["PYTHONPATH"] = str(tmp / "hide") + os.pathsep + env["PYTHONPATH"]
      env.pop("TPU_LIBRARY_PATH", None)  # importing JAX with libtpu installed sets it
    cmd = [sys.executable, "-m", "muse_jax.compile", *args, f"--json={tmp / name}.json"]
    procs[name] = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
  out = {}
  for name, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=600)
    report = None
    if os.path.exists(f"{tmp / name}.json"):
      with open(f"{tmp / name}.json") as f:
        report = json.load(f)
    out[name] = (proc.returncode, stdout, stderr, report)
  return out


def test_accelerator_types_map_to_slices():
  t = parse_target("v5p-256")  # v5p counts TensorCores: 128 chips
  assert (t.topology_name, t.chips) == ("v5p:4x4x8", 128)
  assert parse_target("v4-512").topology_name == "v4:4x8x8"
  assert parse_target("v5litepod-16").topology_name == "v5e:4x4"  # v5e counts chips
  assert parse_target("v6e-64").topology_name == "v6e:8x8"
  t = parse_target("v5p:2x2x1", num_slices=2)
  assert (t.chips, t.generation.hbm_bytes) == (8, 95 << 30)
  for bad in ("v5p-6", "v5e:2x2x1", "v7-8", "v5p"):
    with pytest.raises(TopologyError):
      parse_target(bad)


def test_tiny_base_compiles_and_reports_memory_collectives_flops(runs):
  rc, stdout, stderr, rep = runs["scanned2"]
  assert rc == 0, stderr[-2000:]
  assert "memory per chip: arguments" in stdout and "all-gather" in stdout
  mem = rep["memory"]
  assert mem["arguments"] > 0 and mem["temporaries"] > 0 and mem["aliased"] > 0
  assert 0 < mem["total"] < 16 << 30
  assert rep["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
  c = rep["collectives"]
  # FSDP over 2 chips: parameters are gathered, gradients reduced.
  assert c["all-gather"]["count"] > 0 and c["all-gather"]["buffer_bytes"] > 0
  assert c["reduce-scatter"]["count"] + c["all-reduce"]["count"] > 0
  assert rep["xla_flops"] > 0 and rep["model_flops"] > 0


def test_scanned_layers_count_their_collectives_per_iteration(runs):
  two, four = runs["scanned2"][3], runs["scanned4"][3]
  assert runs["scanned4"][0] == 0, runs["scanned4"][2][-2000:]
  # Same program text up to the loop's trip count: twice the layers, more gathers per step.
  assert four["collectives"]["all-gather"]["count"] > two["collectives"]["all-gather"]["count"]
  assert (four["collectives"]["all-gather"]["buffer_bytes"]
          > 1.5 * two["collectives"]["all-gather"]["buffer_bytes"])


def test_sr_stage_unrolled_compiles_on_v4(runs):
  rc, stdout, stderr, rep = runs["sr_unrolled"]
  assert rc == 0, stderr[-2000:]
  assert "stage sr" in stdout and "layers unrolled" in stdout
  assert rep["target"].startswith("v4-8 (v4:2x2x1, 4 chips")


def test_a_step_that_does_not_fit_fails_in_one_line(runs):
  rc, _, stderr, rep = runs["too_large"]
  lines = [l for l in stderr.splitlines() if l.strip()]
  assert rc == 2 and rep is None
  assert len(lines) == 1, stderr
  assert lines[0].startswith("error: the train step does not fit v5e-4 (v5e:2x2, 4 chips")
  assert "short by" in lines[0] and "GiB" in lines[0]


def test_missing_libtpu_is_one_line_and_status_2(runs):
  rc, _, stderr, _ = runs["no_libtpu"]
  lines = [l for l in stderr.splitlines() if l.strip()]
  assert rc == 2 and len(lines) == 1, stderr
  assert lines[0].startswith("error: libtpu is not installed") and ".[tpu]" in lines[0]
