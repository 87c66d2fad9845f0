"""The cascaded pipeline end to end on tiny random-weight checkpoints (configs/pipeline_tiny.py)."""
import json
import os
import shlex
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import pipeline_tiny
from muse_jax.sampling import image_io, loading
from muse_jax.sampling.pipeline import Pipeline
from muse_jax.training.registry import stage_model
from muse_jax.workdir import checkpoints
from muse_jax.workdir.checkpoints import MissingCheckpoint
from tests.training.helpers import REPO

STAGES = ("base", "sr", "vq_lo", "vq_hi")


def random_params(config, seed: int):
  """Random params for a stage's model, drawn with numpy (no init compile): norm scales 1,
  biases 0, other weights N(0, 0.3^2) (large enough that every input visibly matters)."""
  rng = np.random.default_rng(seed)

  def draw(path, a):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "scale":
      return np.ones(a.shape, a.dtype)
    if name == "bias":
      return np.zeros(a.shape, a.dtype)
    return (0.3 * rng.standard_normal(a.shape)).astype(a.dtype)

  return jax.tree_util.tree_map_with_path(draw, stage_model(config).abstract_params())


def save_random_stage(config, workdir: str, seed: int, *, step: int = 1, ema: bool = False,
                      write_config_json: bool = True):
  """Saves a checkpoint in the trainer's layout around random params; returns the params a
  sampler should load (the EMA when `ema`).

  base/sr: the masked stages' TrainState (params, optimizer state, EMA); vqgan: step and
  generator params (the sampler reads nothing else).
  """
  from muse_jax.workdir.checkpointer import Checkpointer
  params = random_params(config, seed)
  if config.stage in ("base", "sr"):
    from muse_jax.training.masked_stage import TrainState
    from muse_jax.training.optimizer import make_optimizer
    tx, _ = make_optimizer(config.optimizer, config.train.num_steps)
    ema_params = jax.tree.map(lambda p: p * 0.5, params) if ema else {}
    state = TrainState(step=np.int32(step), params=params, opt_state=tx.init(params),
                       ema_params=ema_params)
    export = ema_params if ema else params
  else:
    state, export = {"step": np.int32(step), "params": params}, params
  with config.unlocked():
    config.checkpoint.async_save = False
  saver = Checkpointer(os.path.join(workdir, "checkpoints"), config.checkpoint)
  saver.save(step, state, {"position": 0}, force=True)
  saver.close()
  if write_config_json:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  return export


def make_tiny_run(root: str, spiece: str):
  """ROOT/{base,sr,vq_lo} random checkpoints and the matching pipeline_tiny config.

  vq_hi reads the vq_lo workdir (the same f4 tokenizer at 32px gives the 8x8 SR grid).
  """
  config = pipeline_tiny.get_config()
  config.pipeline.text_encoder.spiece_model = spiece
  config.pipeline.vq_hi.workdir = os.path.join(root, "vq_lo")
  params = {}
  for seed, name in enumerate(("base", "sr", "vq_lo")):
    stage_cfg = loading.stage_config(config.pipeline[name])
    # base: no config.json (the pipeline's own model overrides must give its shapes);
    # sr: with an EMA, which the sampler must prefer.
    params[name] = save_random_stage(stage_cfg, os.path.join(root, name), seed,
                                     ema=name == "sr", write_config_json=name != "base")
  return config, params


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
  from tests.encoders.test_text_tokenizer import train_spiece
  return train_spiece(str(tmp_path_factory.mktemp("spiece")))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, spiece):
  root = str(tmp_path_factory.mktemp("run"))
  config, params = make_tiny_run(root, spiece)
  return root, config, params


@pytest.fixture(scope="module")
def pipe(tiny_run):
  root, config, _ = tiny_run
  return Pipeline.from_config(config, root, rng_impl="rbg")


def flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_load_stage_params_restores_exactly_the_saved_params(tiny_run):
  root, config, params = tiny_run
  for name in ("base", "sr", "vq_lo"):  # sr: the EMA params
    cfg = loading.stage_config(config.pipeline[name], os.path.join(root, name))
    loaded, step = loading.load_stage_params(cfg, os.path.join(root, name), name=name)
    assert step == 1
    want, got = flat(params[name]), flat(loaded)
    assert want.keys() == got.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=f"{name} {k}")


def test_generate_writes_png_of_the_cascade_size(pipe, tmp_path):
  from PIL import Image
  assert (pipe.lo_size, pipe.hi_size, pipe.image_size) == (16, 32, 32)
  out = pipe.generate(["a red cube"], seed=0)
  assert out.images.shape == (1, 32, 32, 3) and out.images.dtype == np.float32
  assert 0.0 <= out.images.min() and out.images.max() <= 1.0
  assert out.tokens_lo.shape == (1, 16) and out.tokens_hi.shape == (1, 64)
  for t in (out.tokens_lo, out.tokens_hi):
    assert t.min() >= 0 and t.max() < 64  # no mask token left
  # The picture is the VQ decode of the SR tokens.
  np.testing.assert_allclose(out.images, pipe.decode_tokens(out.tokens_lo, out.tokens_hi),
                             atol=1e-6)
  # Same seed -> same images; another seed -> other tokens.
  np.testing.assert_array_equal(pipe.generate(["a red cube"], seed=0).tokens_hi, out.tokens_hi)
  assert not np.array_equal(pipe.generate(["a red cube"], seed=1).tokens_hi, out.tokens_hi)
  # The SR stage reads the base tokens: other low-res tokens, other high-res tokens.
  cond, uncond = pipe.conditions(["a red cube"])
  key = jax.random.key(5, impl="rbg")
  mask = np.ones((1, 64), bool)
  start = np.full((1, 64), 64)
  hi_a = pipe.run_stage("sr", "decode", start, mask, cond, uncond, key, tokens_lo=out.tokens_lo)
  hi_b = pipe.run_stage("sr", "decode", start, mask, cond, uncond, key,
                        tokens_lo=(out.tokens_lo + 7) % 64)
  assert not np.array_equal(hi_a, hi_b)
  paths = image_io.save_images(np.concatenate([out.images] * 2), str(tmp_path / "x.png"))
  assert [os.path.basename(p) for p in paths] == ["x_0.png", "x_1.png"]
  with Image.open(paths[0]) as im:
    assert im.size == (32, 32) and im.mode == "RGB"
    np.testing.assert_allclose(np.asarray(im) / 255.0, out.images[0], atol=0.5 / 255 + 1e-6)


def test_negative_prompt_changes_the_result(pipe):
  base = pipe.generate(["a red cube"], seed=3)
  neg = pipe.generate(["a red cube"], negative_prompt="green triangle", seed=3)
  assert not np.array_equal(base.tokens_hi, neg.tokens_hi) or not np.array_equal(
      base.tokens_lo, neg.tokens_lo)


def test_stage_context_matches_the_full_model(pipe):
  """encode_context + decode (what the sampler runs) equals the model's __call__."""
  import jax.numpy as jnp
  model = pipe.base.model_def.bind(pipe.base.params)
  text, length = pipe.encode_text(["a red cube", "blue"])
  tokens = jnp.array([[64, 3] * 8, [5] * 16], jnp.int32)
  full = model(tokens, text, length)
  split = model.decode(tokens, *model.encode_context(text, length))
  np.testing.assert_allclose(split, full, atol=1e-6)


def _checker_image(size):
  y, x = np.mgrid[:size, :size]
  img = np.zeros((size, size, 3), np.float32)
  img[..., 0] = ((y // 8 + x // 8) % 2)
  img[..., 1] = x / size
  img[..., 2] = y / size
  return img


def test_inpaint_keeps_tokens_outside_the_mask(pipe):
  size = pipe.image_size
  image = _checker_image(size)
  mask = np.zeros((size, size), bool)
  mask[:12, 4:20] = True  # touches low-res rows 0..2 / cols 1..4 and high-res tokens accordingly
  lo_in, hi_in = pipe.encode_image(image)
  out = pipe.inpaint(image, mask, ["a red cube"], seed=1)
  lo_mask, hi_mask = (np.asarray(m) for m in pipe.token_masks(mask, 1))
  assert 0 < lo_mask.sum() < lo_mask.size and 0 < hi_mask.sum() < hi_mask.size
  np.testing.assert_array_equal(out.tokens_lo[~lo_mask], lo_in[~lo_mask])
  np.testing.assert_array_equal(out.tokens_hi[~hi_mask], hi_in[~hi_mask])
  # Inside the mask something was regenerated.
  assert not np.array_equal(out.tokens_hi[hi_mask], hi_in[hi_mask])


def test_outpaint_regenerates_only_outside_the_box(pipe):
  size = pipe.image_size
  image = _checker_image(size)
  box = (8, 8, 24, 24)
  lo_in, hi_in = pipe.encode_image(image)
  out = pipe.outpaint(image, box, ["a red cube"], seed=2)
  keep_hi = np.zeros((8, 8), bool)
  keep_hi[2:6, 2:6] = True  # f4 tokens fully inside the box
  keep_lo = np.zeros((4, 4), bool)
  keep_lo[1:3, 1:3] = True  # f8-equivalent low-res tokens (16 px image, 4x4 grid)
  np.testing.assert_array_equal(out.tokens_hi[0][keep_hi.ravel()], hi_in[0][keep_hi.ravel()])
  np.testing.assert_array_equal(out.tokens_lo[0][keep_lo.ravel()], lo_in[0][keep_lo.ravel()])


def test_mask_free_edit_runs_and_respects_an_editable_mask(pipe):
  size = pipe.image_size
  image = _checker_image(size)
  lo_in, hi_in = pipe.encode_image(image)
  out = pipe.mask_free_edit(image, ["a red cube"], seed=0)
  assert out.images.shape == (1, size, size, 3)
  changed = (out.tokens_lo != lo_in).sum() + (out.tokens_hi != hi_in).sum()
  assert changed > 0
  editable = np.zeros((size, size), bool)
  editable[:, :8] = True  # the left quarter only
  out = pipe.mask_free_edit(image, ["a red cube"], mask=editable, seed=0)
  lo_m, hi_m = (np.asarray(m) for m in pipe.token_masks(editable, 1))
  np.testing.assert_array_equal(out.tokens_lo[~lo_m], lo_in[~lo_m])
  np.testing.assert_array_equal(out.tokens_hi[~hi_m], hi_in[~hi_m])


def test_base_only_pipeline(pipe):
  p = Pipeline(pipe.sampling, pipe.text_encoder, pipe.vq_lo, pipe.base, rng_impl="rbg")
  assert p.image_size == 16
  out = p.generate(["a red cube"], seed=0)
  assert out.images.shape == (1, 16, 16, 3) and out.tokens_hi is None
  np.testing.assert_allclose(out.images, np.asarray(
      pipe.vq_lo.decode(out.tokens_lo.reshape(1, 4, 4))), atol=1e-6)


def test_missing_checkpoint_is_a_clear_error(tiny_run, tmp_path):
  _, config, _ = tiny_run
  with pytest.raises(MissingCheckpoint) as e:
    Pipeline.from_config(config, str(tmp_path))
  msg = str(e.value)
  assert f"no checkpoint in {tmp_path}/base/checkpoints" in msg
  assert "train the base stage first with python -m muse_jax.train --config=configs/tiny.py" \
      in msg


def _parse_train_flags(command: str):
  """The config the train CLI (muse_jax/train.py's config flag) builds from `command`."""
  from absl import flags
  from ml_collections import config_flags
  argv = shlex.split(command)[2:]  # drop "python -m"
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  flags.DEFINE_string("workdir", None, "", flag_values=values)
  values(argv)
  return values.config, values.workdir


def test_missing_checkpoint_hint_trains_the_pipeline_shapes(tmp_path, monkeypatch):
  # pipeline_tiny's base sets text_dim=32 where configs/tiny.py has 24: a hint without the
  # override trains a checkpoint the pipeline cannot load.
  section = pipeline_tiny.get_config().pipeline.base
  with pytest.raises(MissingCheckpoint) as e:
    loading.load_transformer(section, "base", str(tmp_path))
  hint = str(e.value).split(" first with ", 1)[1]
  assert "--config.model.text_dim=32" in hint
  assert "--config.model.dtype" not in hint  # runtime keys: sampling's choice, not training's
  monkeypatch.chdir(REPO)
  config, workdir = _parse_train_flags(hint)
  assert workdir == f"{tmp_path}/base" and config.model.text_dim == 32
  # Other value kinds, a workdir that needs quoting, and lists (JSON's tuples).
  overrides = dict(block_out_channels=[8, 16], norm_eps=1e-5, pixel_range="0_1",
                   latent_channels=4, dtype="bfloat16")
  command = checkpoints.train_command("vqgan_tiny", f"{tmp_path}/my vq", overrides)
  config, workdir = _parse_train_flags(command)
  assert workdir == f"{tmp_path}/my vq"
  assert (config.model.block_out_channels, config.model.norm_eps, config.model.pixel_range,
          config.model.latent_channels, config.model.dtype) == ((8, 16), 1e-5, "0_1", 4, "float32")


def test_mismatched_checkpoint_names_the_parameter(tiny_run):
  root, config, _ = tiny_run
  cfg = loading.stage_config(config.pipeline.base)  # no config.json in base/: shapes from config
  with cfg.unlocked():
    cfg.model.hidden_size = 48
  with pytest.raises(ValueError, match=r"base checkpoint .* has shape .* config needs"):
    loading.load_stage_params(cfg, os.path.join(root, "base"), name="base")


def test_an_unreadable_checkpoint_says_why(tiny_run, tmp_path):
  root, config, _ = tiny_run
  workdir = str(tmp_path / "base")
  shutil.copytree(os.path.join(root, "base"), workdir)
  os.remove(os.path.join(workdir, "checkpoints", "1", "state", "_METADATA"))
  cfg = loading.stage_config(config.pipeline.base)
  with pytest.raises(ValueError, match=r"cannot read the checkpoint metadata in "
                     r".*/checkpoints/1/state: Metadata file .*_METADATA.* does not exist"):
    loading.load_stage_params(cfg, workdir, name="base")


def test_saved_config_json_wins_for_shapes(tiny_run):
  root, config, _ = tiny_run
  import copy
  section = copy.deepcopy(config.pipeline.sr)
  section.model.grid_size = 4  # wrong; sr/config.json says 8
  cfg = loading.stage_config(section, os.path.join(root, "sr"))
  assert cfg.model.grid_size == 8 and cfg.model.dtype == "float32"
  with open(os.path.join(root, "sr", "config.json")) as f:
    assert json.load(f)["model"]["grid_size"] == 8


def test_cast_params_and_mask_files(tmp_path):
  from PIL import Image
  params = {"w": np.ones((2, 3), np.float32), "ids": np.arange(3, dtype=np.int32)}
  cast = loading.cast_params(params, "bfloat16")
  assert cast["w"].dtype == jax.numpy.bfloat16 and cast["ids"].dtype == np.int32
  assert loading.cast_params(params, "float32")["w"].dtype == np.float32
  # A 40x60 mask is centre-cropped to 40x40 (columns 10..49) and resized to 20x20.
  m = np.zeros((40, 60), np.uint8)
  m[:, 30:] = 255
  Image.fromarray(m).save(tmp_path / "m.png")
  mask = image_io.load_mask(str(tmp_path / "m.png"), 20)
  assert mask.shape == (20, 20) and mask.dtype == bool
  assert not mask[:, :10].any() and mask[:, 10:].all()


def test_gpu_sampler_options_are_known_to_xla():
  from muse_jax.sampling import stage_fns as P
  # A misspelt option name or enum value fails to compile; the debug options are shared by
  # all backends, so the CPU checks the GPU options too.
  fn = jax.jit(lambda x: x @ x, compiler_options=P.GPU_SAMPLER_OPTIONS)
  np.testing.assert_allclose(fn(jnp.eye(3)), np.eye(3))
  with pytest.raises(Exception, match="No such compile option"):
    jax.jit(lambda x: x @ x, compiler_options={"xla_gpu_enable_triton_gemmx": False})(jnp.eye(3))
  with pytest.raises(Exception, match="not a valid enum value"):
    jax.jit(lambda x: x @ x, compiler_options={"xla_gpu_enable_command_buffer": "FUSION,WHILEX"})(
        jnp.eye(3))
  assert P.sampler_compiler_options() == ({} if jax.default_backend() != "gpu"
                                          else P.GPU_SAMPLER_OPTIONS)


def test_fp8_override_quantizes_the_stage_and_samples_like_it(tiny_run, pipe):
  root, config, _ = tiny_run
  section = ml_collections.ConfigDict(config.pipeline.base.to_dict())
  section.model.fp8_matmuls = True
  base8 = loading.load_transformer(section, "base", root)
  blocks = base8.params["stack"]["blocks"]
  assert blocks["mlp"]["wi"]["kernel"].dtype == jnp.float8_e4m3fn
  assert blocks["mlp"]["wo"]["kernel"].dtype == pipe.base.params["stack"]["blocks"]["mlp"][
      "wo"]["kernel"].dtype
  p8 = Pipeline(pipe.sampling, pipe.text_encoder, pipe.vq_lo, base8, rng_impl="rbg")
  p32 = Pipeline(pipe.sampling, pipe.text_encoder, pipe.vq_lo, pipe.base, rng_impl="rbg")
  prompts = ["a red cube", "two blue balls"]
  got, ref = p8.generate(prompts, seed=0), p32.generate(prompts, seed=0)
  assert got.tokens_lo.shape == ref.tokens_lo.shape
  assert ((got.tokens_lo >= 0) & (got.tokens_lo < base8.mask_id)).all()
  agree = float(np.mean(got.tokens_lo == ref.tokens_lo))
  print(f"fp8 vs float tokens agree: {agree:.2f}")
  assert agree > 0.5
