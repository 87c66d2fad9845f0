"""VQGAN tokenizer model: shapes, token ranges, straight-through gradients, overfitting, API."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from muse_jax.configs import common_vqgan
from muse_jax.encoders.vq_tokenizer import VQTokenizer
from muse_jax.models import vqgan as V
from muse_jax.models.discriminator import Discriminator, DiscriminatorConfig, minibatch_stddev
from muse_jax.models.functional import functionalize
from muse_jax.training import vqgan_losses as VL
from tests.models.test_vqgan_helpers import np_params


def _cfg(**kw):
  base = dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
              codebook_size=32, norm_groups=4, dtype="float32")
  base.update(kw)
  return V.VQGANConfig(**base)


def _build(cfg, seed=0):
  fm, _ = functionalize(lambda r: V.VQGAN(cfg, rngs=r))
  return fm, np_params(fm.abstract_params(), seed)


@pytest.mark.parametrize("kind,size,grid", [("f16", 256, 16), ("f8", 512, 64)])
def test_full_config_shapes(kind, size, grid):
  """The real configs, shape-checked abstractly (no compute on CPU)."""
  cfg = V.VQGANConfig.from_config(common_vqgan.vqgan_model(kind))
  assert cfg.token_grid(size) == grid and cfg.codebook_size == 8192
  fm, _ = functionalize(lambda r: V.VQGAN(cfg, rngs=r))
  p = fm.abstract_params()
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  ids = jax.eval_shape(lambda p, x: fm.bind(p).encode(x), p, x)
  assert ids.shape == (2, grid, grid) and ids.dtype == jnp.int32
  img = jax.eval_shape(lambda p, i: fm.bind(p).decode(i), p, ids)
  assert img.shape == (2, size, size, 3) and img.dtype == jnp.float32
  # 2 res blocks per resolution in the encoder, 3 in each decoder up block, no attention.
  assert len(p["encoder"]["down_blocks"][0]["resnets"]) == 2
  assert len(p["decoder"]["up_blocks"][0]["resnets"]) == 3
  assert p["encoder"]["conv_in"]["kernel"].shape == (3, 3, 3, 128)
  assert p["quantize"]["embedding"].shape == (8192, cfg.embed_dim)


@pytest.mark.parametrize("levels,size", [(5, 32), (4, 32)])
def test_tiny_same_depth_token_ranges(levels, size):
  """f16-like (5 levels) and f8-like (4 levels) tiny models: grid and id range."""
  cfg = _cfg(block_out_channels=(8,) * levels, codebook_size=16)
  fm, p = _build(cfg)
  x = np.random.default_rng(1).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
  rec, q = jax.jit(lambda p, x: fm.bind(p)(x))(p, x)
  f = 2 ** (levels - 1)
  assert q.ids.shape == (2, size // f, size // f)
  assert int(q.ids.min()) >= 0 and int(q.ids.max()) < 16
  assert rec.shape == x.shape
  np.testing.assert_allclose(q.counts.sum(), q.ids.size)


def test_straight_through_gradients_reach_encoder():
  cfg = _cfg()
  fm, p = _build(cfg)
  x = np.random.default_rng(1).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)

  @jax.jit
  def grads(p):
    def loss(p):
      rec, _ = fm.bind(p)(x)
      return jnp.mean(jnp.square(rec - x))
    g = jax.grad(loss)(p)
    # d loss / d z equals d loss / d z_q (the straight-through estimator).
    model = fm.bind(p)
    z = model.encode_latents(x)
    zq = model.quantize.lookup(model.quantize.nearest(z))
    g_z = jax.grad(lambda z: jnp.mean(jnp.square(
        fm.bind(p).decode_latents(fm.bind(p).quantize(z).quantized) - x)))(z)
    g_zq = jax.grad(lambda zq: jnp.mean(jnp.square(fm.bind(p).decode_latents(zq) - x)))(zq)
    return g, g_z, g_zq
  g, g_z, g_zq = grads(p)
  enc = np.asarray(g["encoder"]["conv_in"]["kernel"])
  assert np.all(np.isfinite(enc)) and np.abs(enc).max() > 0
  # Reconstruction gradients do not reach the codebook (only the codebook loss does).
  np.testing.assert_array_equal(g["quantize"]["embedding"], 0.0)
  assert np.abs(g_z).max() > 0
  np.testing.assert_allclose(g_z, g_zq, rtol=1e-4, atol=1e-6 * float(np.abs(g_zq).max()))


def test_tiny_tokenizer_overfits():
  cfg = _cfg(codebook_size=64, latent_channels=8)
  fm, p = _build(cfg)
  yy, xx = np.mgrid[0:16, 0:16] / 15.0
  imgs = np.stack([np.stack([xx, yy, xx * yy], -1), np.stack([yy, 1 - xx, xx], -1),
                   np.stack([1 - yy, xx * 0 + .5, yy * xx], -1),
                   np.stack([(xx > .5) * 1., yy, 1 - xx], -1)]).astype(np.float32) * 2 - 1
  x = jnp.asarray(imgs)
  tx = optax.adam(3e-3)
  opt = tx.init(p)

  def loss_fn(p):
    rec, q = fm.bind(p)(x)
    return VL.reconstruction_loss(x, rec, "l2") + q.codebook_loss + q.commitment_loss, rec

  @jax.jit
  def step(p, opt):
    (l, rec), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
    u, opt = tx.update(g, opt, p)
    return optax.apply_updates(p, u), opt, VL.psnr(x, rec)
  _, _, start = step(p, opt)
  for _ in range(150):
    p, opt, ps = step(p, opt)
  _, _, end = step(p, opt)
  assert float(end) > float(start) + 10.0, (float(start), float(end))
  assert float(end) > 20.0


def test_decoder_finetune_params():
  small = _cfg()
  big = _cfg(decoder_block_out_channels=(16, 32), decoder_layers_per_block=2)
  _, finished = _build(small, 0)
  fm_big, fresh = _build(big, 1)
  p = V.finetune_decoder_params(finished, fresh)
  for k in ("encoder", "quant_conv", "quantize"):
    jax.tree.map(np.testing.assert_array_equal, p[k], finished[k])
  for k in ("post_quant_conv", "decoder"):
    jax.tree.map(np.testing.assert_array_equal, p[k], fresh[k])
  assert len(p["decoder"]["up_blocks"][0]["resnets"]) == 3
  assert p["decoder"]["conv_out"]["kernel"].shape == (3, 3, 16, 3)
  # same token ids as the finished tokenizer
  x = np.random.default_rng(2).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
  fm_small, _ = _build(small)
  ids_big = jax.jit(lambda p, x: fm_big.bind(p).encode(x))(p, x)
  ids_small = jax.jit(lambda p, x: fm_small.bind(p).encode(x))(finished, x)
  np.testing.assert_array_equal(ids_big, ids_small)
  mask = V.trainable_mask(p, decoder_only=True)
  assert mask["decoder"]["conv_in"]["kernel"] and not mask["encoder"]["conv_in"]["kernel"]
  with pytest.raises(ValueError, match="encoder"):
    _, other = _build(_cfg(block_out_channels=(8, 24), norm_groups=8), 0)
    V.finetune_decoder_params(other, fresh)


def test_tokenizer_api_sharded_and_padded():
  cfg = _cfg()
  fm, p = _build(cfg)
  mesh = Mesh(np.asarray(jax.devices()).reshape(8, 1, 1), ("data", "fsdp", "tensor"))
  tok = VQTokenizer(cfg, p, mesh)
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)  # 3 images on 8 devices
  ids = np.asarray(tok.encode(imgs))
  x = jnp.asarray(imgs, jnp.float32) / 255.0 * 2 - 1
  want = jax.jit(lambda p, x: fm.bind(p).encode(x))(p, x)
  np.testing.assert_array_equal(ids, want)
  np.testing.assert_array_equal(tok.encode(imgs.astype(np.float32) / 255.0), ids)
  out = np.asarray(tok.decode(ids))
  assert out.shape == (3, 16, 16, 3) and out.min() >= 0 and out.max() <= 1
  dec = jax.jit(lambda p, i: fm.bind(p).decode(i))(p, ids)
  np.testing.assert_allclose(out, np.clip((dec + 1) / 2, 0, 1), atol=1e-5)
  with pytest.raises(ValueError, match="divisible"):
    tok.encode(np.zeros((1, 17, 17, 3), np.float32))


def test_config_validation():
  with pytest.raises(ValueError, match="norm_groups"):
    V.VQGANConfig(block_out_channels=(8, 12), norm_groups=8)
  with pytest.raises(ValueError, match="unknown keys"):
    V.VQGANConfig.from_config({"block_out_chanels": (8,)})
  with pytest.raises(ValueError, match="codebook_norm"):
    _cfg(codebook_norm="cosine")


def test_l2_codebook_norm_encode_decode_consistent():
  """codebook_norm="l2" with factorized codes: ids come from the normalised lookup, decode(ids)
  is exactly the training reconstruction, and the default keeps the plain lookup."""
  cfg = _cfg(codebook_dim=3, codebook_norm="l2")
  fm, p = _build(cfg)
  assert p["quantize"]["embedding"].shape == (32, 3)
  x = np.random.default_rng(3).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)

  @jax.jit
  def run(p):
    m = fm.bind(p)
    rec, q = m(x)
    return rec, q, m.encode(x), m.decode(q.ids), m.encode_latents(x)
  rec, q, ids, dec, z = run(p)
  np.testing.assert_array_equal(ids, q.ids)
  np.testing.assert_allclose(dec, rec, atol=1e-5)
  e = np.asarray(p["quantize"]["embedding"])
  zn = np.asarray(z) / np.linalg.norm(np.asarray(z), axis=-1, keepdims=True)
  want = np.argmax(zn @ (e / np.linalg.norm(e, axis=-1, keepdims=True)).T, axis=-1)
  np.testing.assert_array_equal(ids, want)
  assert V.VQGANConfig.from_config(common_vqgan.vqgan_model("f16")).codebook_norm == "none"


def test_discriminator_shapes_and_mbstd():
  cfg = DiscriminatorConfig(image_size=16, base_channels=4, channel_multipliers=(2, 2),
                            max_channels=8, mbstd_group=2, dtype="float32")
  dm, _ = functionalize(lambda r: Discriminator(cfg, rngs=r))
  p = np_params(dm.abstract_params())
  x = np.random.default_rng(1).standard_normal((4, 16, 16, 3)).astype(np.float32)
  out = jax.jit(lambda p, x: dm.bind(p)(x))(p, x)
  assert out.shape == (4,) and out.dtype == jnp.float32
  # minibatch stddev: examples i and i + B/g share a group.
  f = np.random.default_rng(2).standard_normal((4, 2, 2, 3)).astype(np.float32)
  y = np.asarray(jax.jit(minibatch_stddev, static_argnums=1)(f, 2))
  for j in range(2):
    want = np.mean(np.sqrt(np.var(np.asarray(f)[[j, j + 2]], axis=0) + 1e-8))
    np.testing.assert_allclose(y[j, ..., -1], want, rtol=1e-5)
    np.testing.assert_allclose(y[j + 2, ..., -1], want, rtol=1e-5)


def test_patch_stem_layout_and_model():
  """patch_size=p: space-to-depth/depth-to-space are exact inverses with the documented channel
  order, the factor is p * 2^(levels-1), and decode(encode(x)) is the training reconstruction."""
  x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
  s = np.asarray(V.space_to_depth(jnp.asarray(x), 2))
  assert s.shape == (2, 2, 3, 12)
  for dy in range(2):
    for dx in range(2):
      np.testing.assert_array_equal(s[:, :, :, (dy * 2 + dx) * 3:(dy * 2 + dx + 1) * 3],
                                    x[:, dy::2, dx::2])
  np.testing.assert_array_equal(V.depth_to_space(jnp.asarray(s), 2), x)
  cfg = _cfg(patch_size=2)
  assert cfg.downsample_factor == 4 and cfg.token_grid(16) == 4
  fm, p = _build(cfg)
  assert p["encoder"]["conv_in"]["kernel"].shape == (3, 3, 12, 8)
  assert p["decoder"]["conv_out"]["kernel"].shape == (3, 3, 8, 12)
  img = np.random.default_rng(4).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)

  @jax.jit
  def run(p):
    m = fm.bind(p)
    rec, q = m(img)
    return rec, q.ids, m.decode(q.ids)
  rec, ids, dec = run(p)
  assert rec.shape == img.shape and ids.shape == (2, 4, 4)
  np.testing.assert_allclose(dec, rec, atol=1e-5)
  with pytest.raises(ValueError, match="patch_size"):
    _cfg(patch_size=0)
  with pytest.raises(ValueError, match="divisible"):
    cfg.token_grid(18)
