"""The start banner of `python -m muse_jax.train` (muse_jax/training/banner.py)."""
from __future__ import annotations

import subprocess

import jax
from flax import nnx

from muse_jax.training.banner import unused_accelerator
from muse_jax.training.registry import get_stage
from tests.training.helpers import REPO, cli_env, tiny_config, train_cmd


def test_train_prints_platform_devices_mesh_params_and_batch_before_training(tmp_path):
  """The banner a user sees, from a real CLI start; the process is killed once the banner is
  out, before any compilation (a few seconds)."""
  proc = subprocess.Popen(
      train_cmd(tmp_path / "run", "--config.train.num_steps=1", "--config.train.eval_every=0",
                "--config.mesh.data=-1", "--config.mesh.fsdp=2", "--config.train.grad_accum=2"),
      cwd=REPO, env=cli_env(8), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  try:
    for line in proc.stdout:
      lines.append(line)
      if line.startswith("  batch") or len(lines) > 200:
        break
  finally:
    proc.kill()
    proc.communicate(timeout=60)
  out = "".join(lines)
  model = get_stage("base").make_model(tiny_config(), nnx.Rngs(0))
  n_params = sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert f"muse_jax: training stage 'base' in {tmp_path / 'run'}\n" in out, out
  assert "platform  cpu: 8 x cpu (8 per process), 1 process, jax " in out
  assert "mesh      data=4 x fsdp=2 x tensor=1 (axes data, fsdp, tensor)" in out
  assert f"params    {n_params:,}\n" in out
  b = tiny_config().train.batch_size
  assert out.endswith(f"batch     {b} global = {b // 8} per device x 8 data-parallel "
                      f"(data x fsdp), in 2 microbatches of {b // 16}; {b} per process\n")
  assert "Starting a new run" not in out  # printed before the loop starts


def test_cpu_jax_next_to_accelerators_is_called_out(tmp_path):
  assert unused_accelerator("cpu", str(tmp_path)) is None
  (tmp_path / "nvidia0").touch()
  assert "pip install -e .[cuda]" in unused_accelerator("cpu", str(tmp_path))
  assert unused_accelerator("gpu", str(tmp_path)) is None
  (tmp_path / "nvidia0").unlink()
  (tmp_path / "accel0").touch()
  assert "pip install -e .[tpu]" in unused_accelerator("cpu", str(tmp_path))
