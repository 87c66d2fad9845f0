"""FP8 (e4m3) post-norm projections for sampling (muse_jax/models/fp8.py), against float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sr_tiny, tiny
from muse_jax.configs.checks import ConfigError
from muse_jax.models import fp8
from muse_jax.models.functional import functionalize
from muse_jax.models.superres import SuperResTransformer
from muse_jax.models.transformer import MaskedTransformer
from muse_jax.training.registry import validate


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_quantize_kernel_maps_the_max_to_448_and_keeps_3_mantissa_bits():
  rng = np.random.default_rng(0)
  w = rng.standard_normal((64, 3, 8)).astype(np.float32)  # [K, 3, N] as a fused qkv kernel
  w8, scale = fp8.quantize_kernel(jnp.asarray(w))
  assert w8.dtype == fp8.E4M3 and w8.shape == (24, 64) and scale.shape == ()
  q = np.asarray(w8, np.float64)
  assert np.abs(q).max() == 448.0
  back = (q * float(scale)).T.reshape(w.shape)  # transposed to [N, K]: undo it
  big = np.abs(w) > float(scale) * 2 ** -6       # normal e4m3 numbers: relative rounding
  np.testing.assert_array_less(np.abs(back - w)[big] / np.abs(w)[big], 2 ** -4 + 1e-6)
  assert np.abs(back - w).max() > 0  # it really rounded


def test_matmul_matches_float64_to_e4m3_precision():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((32, 128))
  x /= np.sqrt(np.mean(x * x, axis=1, keepdims=True))  # what an RMSNorm emits
  w = rng.standard_normal((128, 96)) * 0.05
  w8, scale = fp8.quantize_kernel(jnp.asarray(w, jnp.float32))
  y = fp8.matmul(jnp.asarray(x, jnp.float32), w8, scale, jnp.float32)
  err = rel(y, x @ w)
  assert 5e-3 < err < 6e-2, err  # e4m3 on both operands: a few percent, not more, not zero
  # Out-of-range activations saturate at 448 instead of becoming NaN.
  huge = fp8.matmul(jnp.full((2, 128), 1e6, jnp.float32), w8, scale, jnp.float32)
  np.testing.assert_allclose(huge, fp8.matmul(jnp.full((2, 128), 448.0), w8, scale,
                                              jnp.float32))


def _with_norm_scales(params, seed):
  """Norm scales in [0.5, 2] (trained ones are not 1): quantize_params must fold them in."""
  rng = np.random.default_rng(seed)

  def draw(path, a):
    if jax.tree_util.keystr(path).endswith("['scale']"):
      return jnp.asarray(rng.uniform(0.5, 2.0, a.shape), a.dtype)
    return a
  return jax.tree_util.tree_map_with_path(draw, params)


def float_and_fp8(cls, config_module, seed):
  """(config, float model, its params with non-unit norm gains, fp8 model, quantized params);
  the quantized tree must be the fp8 model's own."""
  c = config_module.get_config()
  fm, init = functionalize(lambda r: cls(c.model, rngs=r))
  params = _with_norm_scales(init(jax.random.key(0)), seed)
  c8 = config_module.get_config()
  with c8.unlocked():
    c8.model.fp8_matmuls = True
  fm8 = functionalize(lambda r: cls(c8.model, rngs=r))[0]
  q = fp8.quantize_params(params)
  assert jax.tree.structure(q) == jax.tree.structure(fm8.abstract_params())
  return c, fm, params, fm8, q


def test_quantized_base_model_tracks_the_float_model():
  c, fm, params, fm8, q = float_and_fp8(MaskedTransformer, tiny, 0)
  blocks = q["stack"]["blocks"]
  for path in (("self_attn", "qkv"), ("cross_attn", "q"), ("mlp", "wi")):
    leaf = blocks[path[0]][path[1]]
    assert leaf["kernel"].dtype == fp8.E4M3 and leaf["kernel_scale"].shape == (c.model.num_layers,)
  for name in ("out", "kv"):  # the other projections keep their precision
    assert blocks["cross_attn"][name]["kernel"].dtype == jnp.float32
  for norm in ("norm_self", "norm_cross", "norm_mlp"):  # folded into the kernels
    assert norm not in blocks
  assert params["stack"]["blocks"]["norm_self"]["scale"].max() > 1.0  # input unchanged
  m = c.model
  tokens = jax.random.randint(jax.random.key(1), (3, m.grid_size ** 2), 0, m.codebook_size + 1)
  text = jax.random.normal(jax.random.key(2), (3, m.text_length, m.text_dim))
  text_len = jnp.array([m.text_length, 3, 0], jnp.int32)
  run = lambda f, p: jax.jit(lambda p: f.bind(p)(tokens, text, text_len))(p)  # noqa: E731
  err = rel(run(fm8, q), run(fm, params))
  assert 1e-3 < err < 0.15, err


def test_quantized_sr_model_tracks_the_float_model():
  c, fm, params, fm8, q = float_and_fp8(SuperResTransformer, sr_tiny, 1)
  assert q["lowres_stack"]["blocks"]["self_attn"]["qkv"]["kernel"].dtype == fp8.E4M3
  assert "cross_attn" not in q["lowres_stack"]["blocks"]
  m = c.model
  k = jax.random.split(jax.random.key(3), 3)
  tokens = jax.random.randint(k[0], (2, m.grid_size ** 2), 0, m.codebook_size + 1)
  lo = jax.random.randint(k[1], (2, m.lowres_grid_size ** 2), 0, m.codebook_size)
  text = jax.random.normal(k[2], (2, m.text_length, m.text_dim))
  text_len = jnp.array([m.text_length, 0], jnp.int32)
  run = lambda f, p: jax.jit(lambda p: f.bind(p)(tokens, lo, text, text_len))(p)  # noqa: E731
  err = rel(run(fm8, q), run(fm, params))
  assert 1e-3 < err < 0.15, err


def test_bad_uses_are_clear_errors():
  with pytest.raises(ValueError, match="no transformer block stack"):
    fp8.quantize_params({"head": {"kernel": jnp.ones((2, 2))}})
  with pytest.raises(ValueError, match="hidden size"):
    fp8.check_width(448 ** 2 + 1)
  c = tiny.get_config()
  with c.unlocked():
    c.model.fp8_matmuls = True
  with pytest.raises(ConfigError, match="sampling transform"):
    validate(c)
