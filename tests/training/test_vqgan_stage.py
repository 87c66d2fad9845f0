"""The vqgan stage: a sharded step matches one device; resume is exact; decoder fine-tuning;
its progress line and its warning."""
import io
import json
import logging

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from PIL import Image

from configs import vqgan_tiny
from muse_jax.configs.checks import ConfigError
from muse_jax.parallel import sharding as shd
from muse_jax.parallel.mesh import make_mesh
from muse_jax.training.base_stage import BaseStage
from muse_jax.training.loop import console_metrics
from muse_jax.training.reporting import Reporter
from muse_jax.training.sr_stage import SuperResStage
from muse_jax.training.vqgan_stage import VQGANStage
from muse_jax.workdir.checkpointer import Checkpointer
from tests.models.test_vqgan_helpers import np_params


def _config(**mesh):
  c = vqgan_tiny.get_config()
  c.model.update(dict(block_out_channels=(8, 16), latent_channels=4, codebook_size=32,
                      norm_groups=4))
  c.discriminator.update(dict(image_size=16, base_channels=4, channel_multipliers=(2,),
                              max_channels=8))
  c.data.update(dict(image_size=16, source="shapes"))
  c.loss.update(dict(disc_start_step=1, perceptual_weight=0.0, lecam_weight=0.1))
  c.quantizer.update(dict(restart_every=2, usage_ema_decay=0.5, restart_threshold=0.5))
  c.train.update(dict(batch_size=8, num_steps=10))
  c.mesh.update(mesh)
  return c


class Runner:
  """Jitted steps of one stage on one mesh, from numpy-initialised params."""

  def __init__(self, config, devices):
    self.mesh = make_mesh(config.mesh, devices)
    self.stage = VQGANStage(config, self.mesh)
    st = self.stage
    self.abstract = jax.eval_shape(st.init_state, jax.random.key(0))
    self.sh = st.state_shardings(self.abstract)
    feats = st.features()
    self.batch_sh = {k: shd.named_sharding(f.axes, self.mesh, st.rules,
                                           (config.train.batch_size,) + f.shape)
                     for k, f in feats.items()}
    repl = NamedSharding(self.mesh, P())

    def step(state, batch, i):
      with shd.activation_rules(self.mesh, st.rules):
        return st.train_step(state, batch, jax.random.fold_in(jax.random.key(1), i))
    self.step = jax.jit(step, in_shardings=(self.sh, self.batch_sh, repl),
                        out_shardings=(self.sh, repl))
    self.source = st.make_source("train", 0, 1)

  def init(self):
    g = np_params(self.stage.fm.abstract_params(), 0)
    d = np_params(self.stage.dm.abstract_params(), 1)
    return jax.jit(self.stage.state_from_params, out_shardings=self.sh)(g, d)

  def run(self, state, start, n):
    metrics = []
    for i in range(start, start + n):
      batch = {k: jax.device_put(v, self.batch_sh[k]) for k, v in next(self.source).items()}
      state, m = self.step(state, batch, np.int32(i))
      metrics.append(jax.device_get(m))
    return state, metrics


@pytest.fixture(scope="module")
def runner8():
  return Runner(_config(data=-1), jax.devices())


def test_sharded_step_matches_single_device(runner8):
  r1 = Runner(_config(data=1), jax.devices()[:1])
  s8, m8 = runner8.run(runner8.init(), 0, 3)
  s1, m1 = r1.run(r1.init(), 0, 3)
  assert m8[0]["gan_active"] == 0 and m8[1]["gan_active"] == 1
  assert m8[1]["d_loss"] > 0 and m8[1]["codes_restarted"] > 0
  for a, b in zip(m8, m1):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-5, err_msg=k)
  flat8 = jax.tree_util.tree_leaves_with_path(jax.device_get(s8))
  flat1 = dict((jax.tree_util.keystr(p), v) for p, v in
               jax.tree_util.tree_leaves_with_path(jax.device_get(s1)))
  for p, v in flat8:
    np.testing.assert_allclose(v, flat1[jax.tree_util.keystr(p)], rtol=1e-3, atol=1e-5,
                               err_msg=jax.tree_util.keystr(p))
  # The batch really is split over 8 devices.
  assert len(runner8.batch_sh["images"].device_set) == 8


def test_resume_is_exact(runner8, tmp_path):
  r = runner8
  r.source.set_state({"position": 0})
  full, m_full = r.run(r.init(), 0, 4)

  r.source.set_state({"position": 0})
  half, _ = r.run(r.init(), 0, 2)
  ck = Checkpointer(str(tmp_path / "ckpt"), r.stage.config.checkpoint)
  ck.save(2, half, r.source.get_state(), force=True)
  ck.wait()
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          r.abstract, r.sh)
  restored, data = ck.restore(2, abstract)
  ck.close()
  r.source.set_state(data)
  resumed, m_res = r.run(restored, 2, 2)
  for a, b in zip(jax.tree.leaves(jax.device_get(full)), jax.tree.leaves(jax.device_get(resumed))):
    np.testing.assert_array_equal(a, b)
  for k in m_full[-1]:
    np.testing.assert_array_equal(m_full[-1][k], m_res[-1][k], err_msg=k)


def test_decoder_finetune_freezes_encoder_and_codebook(tmp_path):
  from safetensors.numpy import save_file

  from muse_jax.models import vqgan as V
  from muse_jax.weights.diffusers_vq import to_diffusers_state
  base = _config(data=1)
  small = V.VQGANConfig.from_config(base.model)
  from muse_jax.models.functional import functionalize
  fm, _ = functionalize(lambda r: V.VQGAN(small, rngs=r))
  finished = np_params(fm.abstract_params(), 3)
  path = str(tmp_path / "finished.safetensors")
  save_file(to_diffusers_state(finished), path)
  c = _config(data=1)
  c.model.update(dict(decoder_block_out_channels=(16, 32), decoder_layers_per_block=2))
  c.finetune.update(dict(decoder_only=True, init_from=path))
  r = Runner(c, jax.devices()[:1])
  s0 = r.init()
  s1, m = r.run(s0, 0, 2)
  p0, p1 = jax.device_get(s0.params), jax.device_get(s1.params)
  for k in ("encoder", "quant_conv", "quantize"):
    jax.tree.map(np.testing.assert_array_equal, p1[k], finished[k])
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                                         p0["decoder"], p1["decoder"]))
  assert max(changed) > 0
  assert p1["decoder"]["conv_out"]["kernel"].shape == (3, 3, 16, 3)
  assert m[-1]["codes_restarted"] == 0


def test_patch_stem_with_adaptive_gan_weight():
  """patch_size=2 (f4 from two levels): the stage's reconstruction is the model's own (the
  depth-to-space head is applied in the loss and in the adaptive weight's output conv)."""
  import jax.numpy as jnp

  from muse_jax.models.vqgan import to_model_range
  from muse_jax.training import vqgan_losses as VL
  c = _config(data=1)
  c.model.update(dict(patch_size=2, codebook_norm="l2", codebook_dim=3))
  c.loss.update(dict(adversarial_weight_mode="adaptive", disc_start_step=0,
                     reconstruction="l1+l2"))
  r = Runner(c, jax.devices()[:1])
  s0 = r.init()
  r.source.set_state({"position": 0})
  images = next(r.source)["images"]
  r.source.set_state({"position": 0})
  _, m = r.run(s0, 0, 2)
  x = to_model_range(jnp.asarray(images), "-1_1")
  x_hat, _ = r.stage.fm.bind(jax.device_get(s0.params))(x)
  np.testing.assert_allclose(m[0]["rec_loss"], VL.reconstruction_loss(x, x_hat, "l1+l2"),
                             rtol=1e-5)
  assert m[0]["gan_active"] == 1 and m[0]["adv_weight"] > 0
  assert all(np.isfinite(v) for mm in m for v in mm.values())


def test_gan_that_never_starts_is_not_compiled():
  """disc_start_step >= num_steps: the step holds no discriminator, with the same results as a
  run whose GAN starts later than the steps compared."""
  runs = []
  for num_steps in (10, 200):
    c = _config(data=1)
    c.loss.disc_start_step = 100
    c.train.num_steps = num_steps
    for o in (c.optimizer, c.disc_optimizer):
      o.schedule = "constant"
    r = Runner(c, jax.devices()[:1])
    assert r.stage.gan_possible == (num_steps == 200)
    s, m = r.run(r.init(), 0, 2)
    runs.append((jax.device_get(s), m))
  (s_a, m_a), (s_b, m_b) = runs
  for a, b in zip(jax.tree.leaves(s_a), jax.tree.leaves(s_b)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  for k in m_a[-1]:
    np.testing.assert_allclose(m_a[-1][k], m_b[-1][k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_data_num_workers_draws_training_images_in_processes(runner8):
  """data.num_workers reaches the train source (the same batches), not the rewinding eval one."""
  st = runner8.stage
  serial = st.make_source("train", 0, 1)
  st.config.data.num_workers = 2
  try:
    train, evaluation = st.make_source("train", 0, 1), st.make_source("eval", 0, 1)
  finally:
    st.config.data.num_workers = 0
  assert (train.num_workers, evaluation.num_workers, serial.num_workers) == (2, 0, 0)
  np.testing.assert_array_equal(next(train)["images"], next(serial)["images"])
  train.close()


def test_trains_on_a_folder_of_images(runner8, tmp_path):
  """data.source=folder: the step compiled for shapes trains on the folder's images."""
  for i in range(3):
    Image.new("RGB", (24 + 8 * i, 20), (40 * i, 90, 200)).save(tmp_path / f"{i}.png")
  st, shapes_source = runner8.stage, runner8.source
  st.config.data.update(dict(source="folder", path=str(tmp_path)))
  try:
    VQGANStage.validate(st.config)
    train, evaluation = st.make_source("train", 0, 1), st.make_source("eval", 0, 1)
    runner8.source = train
    _, metrics = runner8.run(runner8.init(), 0, 1)
  finally:
    st.config.data.update(dict(source="shapes", path=""))
    runner8.source = shapes_source
  assert sorted(train.files) == ["0.png", "1.png", "2.png"] and evaluation.root == str(tmp_path)
  assert np.isfinite(metrics[0]["loss"])
  c = _config()
  c.data.source = "folder"
  with pytest.raises(ConfigError, match="data.source=folder needs data.path"):
    VQGANStage.validate(c)
  c.data.source = "webdataset"
  with pytest.raises(ConfigError, match="the vqgan stage reads shapes, synthetic, folder"):
    VQGANStage.validate(c)


def _stage(c):
  return VQGANStage(c, make_mesh(c.mesh, jax.devices()[:1]))


def test_progress_line_shows_a_few_metrics(tmp_path):
  """The console line names the losses trained with and the stage's health metrics, not every
  metric of the step (traced, not compiled); metrics.jsonl still gets them all."""
  st = _stage(_config(data=1))
  abstract = jax.eval_shape(st.init_state, jax.random.key(0))
  batch = {k: jax.ShapeDtypeStruct((8,) + f.shape, f.dtype) for k, f in st.features().items()}
  _, shapes = jax.eval_shape(st.train_step, abstract, batch, jax.random.key(1))
  metrics = {k: 0.25 for k in shapes}
  assert len(metrics) > 20
  shown = ["loss", "rec_loss", "g_adv_loss", "d_loss", "psnr", "codebook_used_fraction_ema"]
  out = io.StringIO()
  r = Reporter(str(tmp_path), total_steps=10, start_step=0, enabled=True, tensorboard=False,
               stream=out)
  r.record(1, metrics)
  r.console(1, console_metrics(st, metrics), examples_per_step=8, flops_per_step=0,
            peak_flops=0)
  r.close()
  fields = out.getvalue().strip().split(" | ")
  assert [f.split(" ")[0] for f in fields[1:-3]] == shown, fields
  assert set(json.loads((tmp_path / "metrics.jsonl").read_text())) == {"step", *metrics}
  # No GAN in this run: no adversarial losses on the line. Stages that name no metrics
  # (base, sr) show all of them.
  c = _config(data=1)
  c.loss.disc_start_step = c.train.num_steps
  assert list(console_metrics(_stage(c), metrics)) == [
      k for k in shown if k not in ("g_adv_loss", "d_loss")]
  assert BaseStage.console_metrics is SuperResStage.console_metrics is None
  assert console_metrics(BaseStage, metrics) is metrics


def test_perceptual_off_warns_once(caplog, capsys):
  c = _config(data=1)
  c.loss.perceptual_weight = 0.1
  with caplog.at_level(logging.WARNING):
    st = _stage(c)
  assert not st.perceptual_on and "perceptual_loss" not in st.console_metrics
  warned = [r.getMessage() for r in caplog.records if "perceptual loss is OFF" in r.getMessage()]
  assert len(warned) == 1, warned
  assert "perceptual loss is OFF" not in capsys.readouterr().err  # the log line is the one
