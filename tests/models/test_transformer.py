import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base_3b, base_632m, tiny
from muse_jax.models.functional import functionalize
from muse_jax.models.transformer import MaskedTransformer, TransformerConfig, unstack_layers


def model_fn(c):
  return lambda r: MaskedTransformer(TransformerConfig.from_config(c.model), rngs=r)


def build(**model):
  c = tiny.get_config()
  c.model.update(model)
  fm, init = functionalize(model_fn(c))
  return c, fm, init(jax.random.key(0))


def inputs(c, b=3, seed=1):
  m = c.model
  k1, k2 = jax.random.split(jax.random.key(seed))
  tokens = jax.random.randint(k1, (b, m.grid_size ** 2), 0, m.codebook_size + 1)
  text = jax.random.normal(k2, (b, m.text_length, m.text_dim))
  text_len = jnp.array([m.text_length, 3, 0][:b], jnp.int32)
  return tokens, text, text_len


def n_params(cfg_module):
  c = cfg_module.get_config()
  fm, _ = functionalize(model_fn(c))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(fm.abstract_params()))


def test_the_typed_config_takes_exactly_the_model_section():
  c = tiny.get_config()
  cfg = TransformerConfig.from_config(c.model)
  assert (cfg.hidden_size, cfg.remat, cfg.scan_layers) == (32, "none", True)
  assert TransformerConfig.from_config(c.model.to_dict()) == cfg  # config.json's dicts
  with pytest.raises(ValueError, match=r"unknown keys \['hiden_size'\]"):
    TransformerConfig.from_config({**c.model.to_dict(), "hiden_size": 3})


def test_documented_parameter_counts():
  assert n_params(base_632m) == 636_114_944
  assert n_params(base_3b) == 3_264_266_240
  c = base_3b.get_config().model
  assert (c.num_layers, c.hidden_size, c.mlp_dim) == (48, 2048, 8192)


def test_logits_shape_and_null_condition_is_finite():
  c, fm, params = build()
  tokens, text, text_len = inputs(c)
  logits = fm.bind(params)(tokens, text, text_len)
  assert logits.shape == (3, 16, 64) and logits.dtype == jnp.float32
  assert bool(jnp.isfinite(logits).all())
  # gradients through the null condition are finite too
  g = jax.grad(lambda p: fm.bind(p)(tokens, text, jnp.zeros(3, jnp.int32)).sum())(params)
  assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(g))


def test_padding_past_text_len_is_ignored_and_text_matters():
  c, fm, params = build()
  tokens, text, text_len = inputs(c)
  model = fm.bind(params)
  base = model(tokens, text, text_len)
  pos = jnp.arange(c.model.text_length)[None, :, None]
  garbage = jnp.where(pos >= text_len[:, None, None], 50.0, text)
  np.testing.assert_allclose(model(tokens, garbage, text_len), base, atol=1e-5)
  # the null condition ignores the text entirely; a real condition does not
  changed = model(tokens, jnp.roll(text, 1, axis=-1), text_len)
  np.testing.assert_allclose(changed[2], base[2], atol=1e-5)
  assert float(jnp.abs(changed[0] - base[0]).max()) > 1e-3


def test_scan_unrolled_and_remat_agree():
  c, fm_scan, params = build(scan_layers=True)
  tokens, text, text_len = inputs(c)

  def logits_and_grad(fm):  # one jit each: eager, the ops dispatch one by one (slow on CPU)
    def loss(p):
      logits = fm.bind(p)(tokens, text, text_len)
      return (logits ** 2).mean(), logits
    g, logits = jax.jit(jax.grad(loss, has_aux=True))(params)
    return logits, g

  ref, g_ref = logits_and_grad(fm_scan)
  for variant in (dict(scan_layers=False), dict(remat="full"), dict(remat="dots"),
                  dict(scan_layers=False, remat="dots_no_batch")):
    _, fm, _ = build(**variant)
    logits, g = logits_and_grad(fm)
    np.testing.assert_allclose(logits, ref, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_bf16_compute_keeps_fp32_params_and_logits():
  c, fm, params = build(dtype="bfloat16")
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  tokens, text, text_len = inputs(c)
  logits = fm.bind(params)(tokens, text, text_len)
  assert logits.dtype == jnp.float32
  _, fm32, _ = build()
  ref = fm32.bind(params)(tokens, text, text_len)
  assert float(jnp.abs(logits - ref).max()) < 0.1


def test_dropout_is_stochastic_only_with_a_key():
  c, fm, params = build(dropout=0.5)
  tokens, text, text_len = inputs(c)
  model = fm.bind(params)
  a = model(tokens, text, text_len)
  np.testing.assert_array_equal(a, model(tokens, text, text_len))
  b = model(tokens, text, text_len, dropout_key=jax.random.key(0))
  assert float(jnp.abs(a - b).max()) > 1e-3


def test_wrong_token_count_is_rejected():
  c, fm, params = build()
  tokens, text, text_len = inputs(c)
  with pytest.raises(ValueError, match="expected 16 tokens"):
    fm.bind(params)(tokens[:, :5], text, text_len)


@pytest.mark.parametrize("scan", [True, False])
def test_cross_attention_cache_equals_the_context(scan):
  c, fm, params = build(scan_layers=scan)
  tokens, text, text_len = inputs(c)
  model = fm.bind(params)
  ctx, ctx_len = model.encode_context(text, text_len)
  cache = model.stack.cross_cache(ctx)
  if scan:
    assert cache[0].shape[0] == c.model.num_layers
  else:
    assert len(cache) == c.model.num_layers
  np.testing.assert_allclose(model.decode(tokens, None, ctx_len, cache=cache),
                             model.decode(tokens, ctx, ctx_len), atol=1e-5)


def test_presliced_layer_params_are_used_and_equal_the_stacked_ones():
  c, fm, params = build(scan_layers=False)
  tokens, text, text_len = inputs(c)
  model = fm.bind(params)
  ctx, ctx_len = model.encode_context(text, text_len)
  layers = model.stack.layer_params()
  assert len(layers) == c.model.num_layers
  stacked = model.decode(tokens, ctx, ctx_len)
  np.testing.assert_allclose(model.decode(tokens, ctx, ctx_len, layers=layers), stacked,
                             atol=1e-6)
  # The sliced layers replace the stacked ones: other layers give other logits.
  swapped = model.decode(tokens, ctx, ctx_len, layers=layers[::-1])
  assert np.abs(np.asarray(swapped) - np.asarray(stacked)).max() > 1e-3
  with pytest.raises(ValueError, match="layers holds"):
    model.decode(tokens, ctx, ctx_len, layers=layers[:1])
  _, fm_scan, params_scan = build(scan_layers=True)
  assert fm_scan.bind(params_scan).stack.layer_params() is None


def test_unstacked_layers_and_their_gradient_equal_indexing():
  # The split is there for the gradient's shape on GPU; its values and gradient must be those
  # of indexing each layer.
  state = {"w": jnp.arange(24.0).reshape(3, 2, 4), "b": {"v": jnp.arange(3.0).reshape(3, 1)}}

  def loss(st, split):
    layers = (unstack_layers(st, 3) if split else
              tuple(jax.tree.map(lambda a, i=i: a[i], st) for i in range(3)))
    return sum((i + 1.0) * jnp.sum(jnp.sin(l["w"]) * l["b"]["v"]) for i, l in enumerate(layers))

  for i, layer in enumerate(unstack_layers(state, 3)):
    np.testing.assert_array_equal(layer["w"], state["w"][i])
    np.testing.assert_array_equal(layer["b"]["v"], state["b"]["v"][i])
  g_split, g_index = (jax.grad(loss)(state, s) for s in (True, False))
  jax.tree.map(np.testing.assert_array_equal, g_split, g_index)


@pytest.mark.parametrize("text_pos_embed", [False, True])
def test_text_position_embedding_makes_word_order_matter(text_pos_embed):
  # The cross-attention has no positions of its own: without the option, reversing the valid
  # text rows gives the same logits; with it, different ones. The null condition stays the
  # learned null vector alone either way.
  c, fm, params = build(text_pos_embed=text_pos_embed)
  assert ("text_pos_embed" in params) == text_pos_embed
  if text_pos_embed:
    assert params["text_pos_embed"].shape == (c.model.text_length, c.model.hidden_size)
    params = {**params, "text_pos_embed": jax.random.normal(
        jax.random.key(5), params["text_pos_embed"].shape)}
  tokens, text, _ = inputs(c, b=1)
  n = 5
  text = text.at[:, n:].set(0)
  reversed_text = text.at[:, :n].set(text[:, :n][:, ::-1])
  text_len = jnp.array([n], jnp.int32)
  model = fm.bind(params)
  a = model(tokens, text, text_len)
  b = model(tokens, reversed_text, text_len)
  assert (float(jnp.abs(a - b).max()) > 1e-2) == text_pos_embed
  if not text_pos_embed:
    np.testing.assert_allclose(a, b, atol=1e-4)
  ctx, ctx_len = model.encode_context(text, jnp.array([0], jnp.int32))
  np.testing.assert_allclose(ctx[0, 0], params["null_context"], atol=1e-6)
  assert int(ctx_len[0]) == 1 and float(jnp.abs(ctx[0, 1:]).max()) == 0.0
