"""The TensorBoard reconstruction grid of the vqgan stage (`train.image_grid_every`): from
sharded params it equals the grid of the gathered params on one device, and a two-process run
(2 processes x 4 CPU devices over gloo) writes it from process 0.

The default rules replicate the VQGAN's conv params; these tests shard their output channels
over fsdp=8 devices, so that in the two-process run no process holds them whole."""
from __future__ import annotations

import importlib.util
import io
import os
import struct
import subprocess
import sys

import jax
import numpy as np
from PIL import Image

from muse_jax.models.vqgan import from_model_range, to_model_range
from muse_jax.parallel.distributed import global_batch
from muse_jax.parallel.mesh import make_mesh
from muse_jax.parallel.sharding import DEFAULT_RULES
from muse_jax.training.steps import StepFunctions
from tests.training.helpers import REPO, cli_env, train_cmd


SHARDED_CONVS = tuple((k, "fsdp" if k == "conv_out" else v) for k, v in DEFAULT_RULES)
# A smaller vqgan_tiny (16 px, two levels), over fsdp=8 with SHARDED_CONVS: a config file, for
# the CLI run too.
CONFIG = f"""
from configs import vqgan_tiny


def get_config():
  c = vqgan_tiny.get_config()
  c.model.update(dict(block_out_channels=(8, 16), latent_channels=4, codebook_size=32,
                      norm_groups=4))
  c.discriminator.update(dict(image_size=16, base_channels=4, channel_multipliers=(2,),
                              max_channels=8))
  c.data.image_size = 16
  c.mesh.update(dict(data=1, fsdp=8, rules={SHARDED_CONVS!r}))
  return c
"""
S = 16  # image size


def config(tmp_path):
  """(the config, its file)."""
  path = tmp_path / "sharded_vqgan.py"
  path.write_text(CONFIG)
  spec = importlib.util.spec_from_file_location("sharded_vqgan", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(), str(path)


def event_images(workdir) -> dict[tuple[str, int], np.ndarray]:
  """{(tag, step): HxWxC uint8} of the image summaries in WORKDIR/tensorboard (TFRecords of
  Event protos: length, its CRC, the bytes, their CRC)."""
  from tensorboardX.proto.event_pb2 import Event
  out = {}
  tb = os.path.join(workdir, "tensorboard")
  for name in os.listdir(tb):
    with open(os.path.join(tb, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (n,) = struct.unpack("<Q", data[pos:pos + 8])
      event = Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      for v in event.summary.value:
        if v.HasField("image"):
          png = io.BytesIO(v.image.encoded_image_string)
          out[(v.tag, event.step)] = np.asarray(Image.open(png))
  return out


def test_grid_from_sharded_params_matches_gathered_params(tmp_path):
  c, _ = config(tmp_path)
  sf = StepFunctions(c, make_mesh(c.mesh, jax.devices()))
  stage = sf.stage
  state = jax.jit(stage.init_state, out_shardings=sf.state_sh)(sf.init_key)
  assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(state.params))
  local = next(stage.make_source("train", 0, 1))
  grid = stage.images(state, global_batch(local, sf.batch_sh))["reconstructions"]
  # The same grid from the params gathered onto one device, numpy in and out.
  pr = stage.model_cfg.pixel_range
  x = to_model_range(jax.numpy.asarray(local["images"][:4]), pr)
  x_hat, _ = stage.fm.bind(jax.device_get(state.params))(x)
  orig = np.asarray(from_model_range(x, pr))
  rec = np.clip(np.asarray(from_model_range(x_hat, pr)), 0, 1)
  want = np.concatenate([np.concatenate([o, r], axis=1) for o, r in zip(orig, rec)], axis=0)
  assert grid.shape == want.shape == (4 * S, 2 * S, 3)
  np.testing.assert_array_equal(grid[:, :S], want[:, :S])  # the originals, exactly
  np.testing.assert_allclose(grid, want, atol=1e-5)


def test_two_process_run_writes_the_grid_from_process_0(tmp_path):
  wd, (_, path) = str(tmp_path / "run"), config(tmp_path)
  args = ["--config.train.num_steps=2", "--config.train.log_every=1",
          "--config.train.eval_every=0", "--config.train.image_grid_every=2"]
  cmd = train_cmd(wd, *args)[1:]
  cmd[cmd.index("--config=configs/tiny.py")] = f"--config={path}"
  cmd[cmd.index("--config.train.tensorboard=False")] = "--config.train.tensorboard=True"
  launcher = [sys.executable, "launch/local.py", "--num_processes=2",
              "--devices_per_process=4", "--"] + cmd
  proc = subprocess.run(launcher, cwd=REPO, env=cli_env(), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
  assert "[0] Done: 2 steps" in proc.stdout, proc.stdout[-4000:]
  images = event_images(wd)
  assert list(images) == [("reconstructions", 2)]
  img = images[("reconstructions", 2)]
  assert img.shape[:2] == (4 * S, 2 * S), img.shape
  assert img.std() > 0
