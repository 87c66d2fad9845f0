"""Trainer behaviour on 8 fake CPU devices: overfitting, sharding, NaN stop, mesh restore."""
import json

import jax
import numpy as np
import pytest

from muse_jax.data.batch import BatchSource
from muse_jax.data.synthetic import SyntheticSource
from muse_jax.training.loop import NonFiniteLoss, Trainer, read_metrics, train
from tests.training.helpers import flat, tiny_config


class FixedBatch(BatchSource):
  """The same batch every step (optionally poisoned with NaN at one step)."""

  def __init__(self, batch, nan_at=None):
    self.batch, self.nan_at, self.position = batch, nan_at, 0

  def __next__(self):
    self.position += 1
    b = {k: v.copy() for k, v in self.batch.items()}
    if self.position == self.nan_at:
      b["text"][:] = np.nan
    return b

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = state["position"]


def first_batch(config):
  t = Trainer(config, "/tmp/unused-probe")
  return next(t.train_source)


def test_tiny_model_overfits_a_fixed_batch(tmp_path):
  c = tiny_config(num_steps=150, batch_size=8, log_every=50)
  c.objective.cfg_dropout = 0.0
  c.optimizer.update(dict(learning_rate=1e-2, warmup_steps=10, schedule="constant"))
  c.model.update(dict(hidden_size=64, mlp_dim=128))
  c.checkpoint.every_steps = 1000
  src = SyntheticSource(Trainer(c, str(tmp_path / "probe")).stage.features(),
                        {"tokens": 64}, seed=0, split="train", global_batch=8)
  fixed = FixedBatch(next(src))
  train(c, str(tmp_path / "run"), train_source=fixed)
  losses = [r["loss"] for r in read_metrics(str(tmp_path / "run"))]
  assert np.mean(losses[:5]) > 3.5  # ~ln(64) at the start
  assert np.mean(losses[-10:]) < np.mean(losses[:5]) / 8


# (fsdp=4 x tensor=2 is covered by test_restore_onto_a_different_mesh)
@pytest.mark.parametrize("mesh", [dict(data=2, fsdp=2, tensor=2)])
def test_sharded_training_matches_one_device(tmp_path, mesh):
  def run(name, mesh_cfg, devices):
    c = tiny_config(num_steps=4, batch_size=8, grad_accum=2, ema_decay=0.9)
    c.model.update(dict(num_heads=4, head_dim=8, hidden_size=32, mlp_dim=64, text_dim=16))
    c.mesh.update(mesh_cfg)
    r = train(c, str(tmp_path / name), devices=devices)
    return r, read_metrics(str(tmp_path / name))

  ref, ref_log = run("one", dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  out, out_log = run("sharded", mesh, None)
  # parameters are really distributed over the mesh
  kernel = out.state.params["stack"]["blocks"]["mlp"]["wi"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(
      None, "fsdp" if mesh["fsdp"] > 1 else None, "tensor")
  np.testing.assert_allclose([r["loss"] for r in out_log], [r["loss"] for r in ref_log],
                             rtol=1e-5)
  a, b = flat(out.state), flat(ref.state)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-6, err_msg=k)


def test_grad_accumulation_matches_full_batch(tmp_path):
  logs = {}
  for accum in (1, 4):
    c = tiny_config(num_steps=3, batch_size=32, grad_accum=accum)
    train(c, str(tmp_path / f"a{accum}"))
    logs[accum] = read_metrics(str(tmp_path / f"a{accum}"))
  for r1, r4 in zip(logs[1], logs[4]):
    np.testing.assert_allclose(r4["loss"], r1["loss"], rtol=1e-5)
    np.testing.assert_allclose(r4["grad_norm"], r1["grad_norm"], rtol=1e-4)


def test_injected_nan_stops_with_clear_error_and_keeps_good_checkpoint(tmp_path):
  c = tiny_config(num_steps=20)
  c.checkpoint.every_steps = 5
  batch = first_batch(c)
  with pytest.raises(NonFiniteLoss, match=r"at step 7;.*Last good checkpoint: step 5"):
    train(c, str(tmp_path), train_source=FixedBatch(batch, nan_at=7))
  from muse_jax.workdir.checkpointer import Checkpointer
  assert Checkpointer(str(tmp_path / "checkpoints"), c.checkpoint).all_steps() == [5]


def test_restore_onto_a_different_mesh(tmp_path, caplog):
  """Also resumes past a torn last line of metrics.jsonl (a kill mid-append)."""
  def cfg(steps, mesh):
    c = tiny_config(num_steps=steps, batch_size=8)
    c.model.update(dict(num_heads=4, head_dim=8, text_dim=16))
    c.checkpoint.every_steps = 3
    c.optimizer.update(dict(schedule="constant", warmup_steps=0))  # same lr for 3 or 6 steps
    c.mesh.update(mesh)
    return c

  eight = dict(data=1, fsdp=4, tensor=2)
  full = train(cfg(6, eight), str(tmp_path / "full"))
  train(cfg(3, eight), str(tmp_path / "moved"))
  with open(tmp_path / "moved" / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "loss": 4.1')
  four = Trainer(cfg(6, dict(data=2, fsdp=1, tensor=2)), str(tmp_path / "moved"),
                 devices=jax.devices()[:4])
  restored, step = four.initial_state()
  assert step == 3
  assert {d.id for d in restored.params["head"]["kernel"].sharding.device_set} == {0, 1, 2, 3}
  moved = four.run()
  assert "dropped 1 line(s) that are not whole records (line 4 (the last))" in caplog.text
  log = (tmp_path / "moved" / "metrics.jsonl").read_text()
  assert log.endswith("\n") and [json.loads(x)["step"] for x in log.splitlines()] == [
      1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([r["loss"] for r in read_metrics(str(tmp_path / "moved"))],
                             [r["loss"] for r in read_metrics(str(tmp_path / "full"))],
                             rtol=1e-5)
  a, b = flat(moved.state.params), flat(full.state.params)
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-6, err_msg=k)
