"""Stage `sr` through the generic trainer on 8 fake CPU devices: learning, sharding, exact
resume and the command line.

Compiles dominate on CPU, so one module fixture trains a tiny SR run on one device and
continues it from its middle checkpoint on a data=2 x fsdp=2 x tensor=2 mesh; the tests share
those runs. The run uses gradient accumulation and an EMA so both go through sharding and
resume.
"""
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import sr_tiny
from muse_jax.data.synthetic import SyntheticSource
from muse_jax.training.loop import Trainer, read_metrics, train
from muse_jax.training.sr_stage import SuperResStage, sr_transformer_train_flops
from tests.training.helpers import REPO, cli_env, flat

STEPS, MID = 10, 5  # MID is odd: resuming at the wrong input position would swap the batches
MESH = dict(data=2, fsdp=2, tensor=2)


def config(mesh):
  c = sr_tiny.get_config()
  c.model.update(dict(num_heads=4, head_dim=8, text_dim=16))  # divisible by the tensor axis
  c.optimizer.update(dict(learning_rate=1e-2, warmup_steps=0, schedule="constant"))
  c.train.update(dict(num_steps=STEPS, batch_size=8, grad_accum=2, ema_decay=0.9,
                      log_every=STEPS, eval_every=0, tensorboard=False))
  c.checkpoint.update(dict(every_steps=MID, keep=2))
  c.mesh.update(mesh)
  return c


def two_batches(c):
  """Synthetic SR batches that alternate between two fixed batches (a resumable source)."""
  feats = SuperResStage(c, None).features()
  vocab = {k: c.model.codebook_size for k in feats}
  return SyntheticSource(feats, vocab, seed=0, split="train", global_batch=8, num_batches=2)


def continue_from(root, name, mesh, devices=None):
  """A new Trainer in ROOT/NAME that resumes from the one-device run's step-MID checkpoint
  (as if that run had died right after saving it) and trains to STEPS on `mesh`."""
  shutil.copytree(root / "one" / "checkpoints" / str(MID), root / name / "checkpoints" / str(MID))
  c = config(mesh)
  trainer = Trainer(c, str(root / name), train_source=two_batches(c), devices=devices)
  return trainer, trainer.run()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """root and the results of: `one`, 10 steps on one device (checkpoints at MID and STEPS);
  `sharded`, its continuation from MID on the data=2 x fsdp=2 x tensor=2 mesh (restoring
  instead of initialising again saves a compile; the base tests cover sharded init)."""
  root = tmp_path_factory.mktemp("sr")
  one_cfg = config(dict(data=1, fsdp=1, tensor=1))
  one = train(one_cfg, str(root / "one"), train_source=two_batches(one_cfg),
              devices=jax.devices()[:1])
  _, sharded = continue_from(root, "sharded", MESH)
  return root, one, sharded


def test_features_are_the_sr_batch_format():
  c = sr_tiny.get_config()
  feats = SuperResStage(c, None).features()
  assert {k: (f.shape, np.dtype(f.dtype)) for k, f in feats.items()} == {
      "tokens": ((16,), np.int32), "tokens_lo": ((4,), np.int32),
      "text": ((8, 24), np.float32), "text_len": ((), np.int32)}
  assert SuperResStage(c, None).flops_per_example() == sr_transformer_train_flops(c.model) > 0


def test_training_reduces_the_loss(runs):
  root, one, _ = runs
  log = read_metrics(str(root / "one"))
  assert [r["step"] for r in log] == list(range(1, STEPS + 1))
  losses = [r["loss"] for r in log]
  assert np.mean(losses[:2]) > 4.0  # about ln(64) = 4.16 or more at the start
  assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2]), losses  # the loss clearly falls
  assert int(one.state.step) == STEPS


def test_sharded_training_matches_one_device(runs):
  root, one, sharded = runs
  p = sharded.state.params
  assert p["lowres_stack"]["blocks"]["mlp"]["wi"]["kernel"].sharding.spec == (
      jax.sharding.PartitionSpec(None, "fsdp", "tensor"))
  assert p["stack"]["blocks"]["cross_attn"]["kv"]["kernel"].sharding.spec == (
      jax.sharding.PartitionSpec(None, "fsdp", None, "tensor", None))
  np.testing.assert_allclose([r["loss"] for r in read_metrics(str(root / "sharded"))],
                             [r["loss"] for r in read_metrics(str(root / "one"))][MID:],
                             rtol=1e-4)
  a, b = flat(sharded.state), flat(one.state)
  assert a.keys() == b.keys()
  # Adam's steps are ~lr (1e-2) wide whatever the gradient's size, so float reordering under
  # sharding moves parameters with tiny gradients by a small fraction of one step.
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-3, atol=5e-4, err_msg=k)


def test_resume_is_exact(runs):
  """Continuing from the MID checkpoint in a new Trainer on the same (one-device) mesh equals
  the uninterrupted run bit for bit: parameters, optimizer, EMA, losses, input position."""
  root, one, _ = runs
  trainer, out = continue_from(root, "resumed", dict(data=1, fsdp=1, tensor=1),
                               devices=jax.devices()[:1])
  assert trainer.train_source.get_state() == {"position": STEPS}
  assert [r["step"] for r in read_metrics(str(root / "resumed"))] == list(range(MID + 1,
                                                                                  STEPS + 1))
  np.testing.assert_array_equal(
      [r["loss"] for r in read_metrics(str(root / "resumed"))],
      [r["loss"] for r in read_metrics(str(root / "one"))][MID:])
  a, b = flat(out.state), flat(one.state)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_cli_trains_sr_tiny(tmp_path):
  wd = str(tmp_path)
  cmd = [sys.executable, "-m", "muse_jax.train", "--config=configs/sr_tiny.py",
         f"--workdir={wd}", "--config.train.tensorboard=False", "--config.train.num_steps=4",
         "--config.train.eval_every=4", "--config.checkpoint.every_steps=4"]
  proc = subprocess.run(cmd, cwd=REPO, env=cli_env(devices=1), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "Starting a new run" in proc.stdout and "eval @ 4" in proc.stdout
  assert os.path.isdir(os.path.join(wd, "checkpoints", "4"))
  log = read_metrics(wd)
  assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
  assert all(np.isfinite(r["loss"]) for r in log if "loss" in r)
  assert any("eval_loss" in r for r in log)
