"""The super-resolution transformer: shapes, conditioning, layer modes, configs, FLOPs.

Compiles are the cost on CPU: the tiny model and its jitted forward are built once per module
and reused with the same shapes wherever a test allows.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sr_268m, sr_tiny
from muse_jax.configs import common_sr
from muse_jax.configs.checks import ConfigError
from muse_jax.models.functional import functionalize
from muse_jax.models.superres import SuperResConfig, SuperResTransformer
from muse_jax.training.registry import validate
from muse_jax.training.sr_stage import check_superres, sr_transformer_train_flops


def build(**model):
  """(config, FunctionalModel) of sr_tiny with `model` overrides."""
  c = sr_tiny.get_config()
  c.model.update(model)
  fm, _ = functionalize(
      lambda r: SuperResTransformer(SuperResConfig.from_config(c.model), rngs=r))
  return c, fm


def forward(fm, method=None):
  """jit-compiled `(params, *args) -> model(*args)` (or `model.<method>(*args)`)."""
  def f(params, *args, **kw):
    model = fm.bind(params)
    return (getattr(model, method) if method else model)(*args, **kw)
  return jax.jit(f)


def inputs(c, b=3, seed=1):
  """tokens, tokens_lo, text, text_len with text lengths (full, 3, null)."""
  m = c.model
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  tokens = jax.random.randint(k1, (b, m.grid_size ** 2), 0, m.codebook_size + 1)
  tokens_lo = jax.random.randint(k2, (b, m.lowres_grid_size ** 2), 0, m.codebook_size)
  text = jax.random.normal(k3, (b, m.text_length, m.text_dim))
  text_len = jnp.array([m.text_length, 3, 0][:b], jnp.int32)
  return tokens, tokens_lo, text, text_len


def random_params(fm, seed=0):
  """Random parameters of the model's shapes, drawn with numpy: the model's own init is a slow
  compile on CPU, and the stage tests exercise it anyway."""
  rng = np.random.default_rng(seed)
  def draw(path, a):
    if jax.tree_util.keystr(path).endswith("['scale']"):
      return jnp.asarray(1.0 + 0.1 * rng.standard_normal(a.shape), a.dtype)
    return jnp.asarray(0.05 * rng.standard_normal(a.shape), a.dtype)
  return jax.tree_util.tree_map_with_path(draw, fm.abstract_params())


@pytest.fixture(scope="module")
def tiny():
  c, fm = build()
  return c, fm, random_params(fm), forward(fm)


def n_params(c):
  fm, _ = functionalize(
      lambda r: SuperResTransformer(SuperResConfig.from_config(c.model), rngs=r))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(fm.abstract_params()))


def test_documented_parameter_counts():
  c = sr_268m.get_config()
  assert n_params(c) == 269_192_576
  m = c.model
  assert (m.lowres_num_layers, m.num_layers, m.grid_size, m.lowres_grid_size) == (16, 32, 64, 16)
  assert n_params(common_sr.get_config()) == 772_159_488  # the paper's widths (1024/4096)


def test_logits_shape_and_null_condition_is_finite(tiny):
  c, fm, params, f = tiny
  tokens, tokens_lo, text, text_len = inputs(c)
  logits = f(params, tokens, tokens_lo, text, jnp.zeros(3, jnp.int32))
  assert logits.shape == (3, 16, 64) and logits.dtype == jnp.float32
  assert bool(jnp.isfinite(logits).all())


def test_context_is_lowres_then_text_with_a_valid_prefix(tiny):
  c, fm, params, _ = tiny
  tokens, tokens_lo, text, text_len = inputs(c)
  context, context_len = fm.bind(params).encode_context(tokens_lo, text, text_len)
  t_lo = c.model.lowres_grid_size ** 2
  assert context.shape == (3, t_lo + c.model.text_length, c.model.hidden_size)
  np.testing.assert_array_equal(context_len, [t_lo + c.model.text_length, t_lo + 3, t_lo + 1])
  np.testing.assert_allclose(context[2, t_lo], params["null_context"], atol=1e-6)


def test_lowres_tokens_matter_and_text_padding_does_not(tiny):
  c, fm, params, f = tiny
  tokens, tokens_lo, text, text_len = inputs(c)
  base = f(params, tokens, tokens_lo, text, text_len)
  # positions past text_len are ignored
  pos = jnp.arange(c.model.text_length)[None, :, None]
  garbage = jnp.where(pos >= text_len[:, None, None], 50.0, text)
  np.testing.assert_allclose(f(params, tokens, tokens_lo, garbage, text_len), base, atol=1e-5)
  # changing the low-res tokens changes every example's logits, the null condition included
  other_lo = (tokens_lo + 1) % c.model.codebook_size
  changed = f(params, tokens, other_lo, text, text_len)
  for i in range(3):
    assert float(jnp.abs(changed[i] - base[i]).max()) > 1e-3, i
  # the null condition ignores the text; a real condition does not
  changed = f(params, tokens, tokens_lo, jnp.roll(text, 1, axis=-1), text_len)
  np.testing.assert_allclose(changed[2], base[2], atol=1e-5)
  assert float(jnp.abs(changed[0] - base[0]).max()) > 1e-3


def test_scan_and_unrolled_remat_agree_and_grads_are_finite(tiny):
  c, fm_scan, params, _ = tiny
  args = inputs(c)  # the last example has the null condition

  def logits_and_grads(fm):
    def loss(p):
      logits = fm.bind(p)(*args)
      return (logits ** 2).mean(), logits
    return jax.jit(jax.grad(loss, has_aux=True))

  g_ref, ref = logits_and_grads(fm_scan)(params)
  assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(g_ref))
  assert float(jnp.abs(g_ref["lowres_embed"]).sum()) > 0
  assert float(jnp.abs(g_ref["lowres_stack"]["blocks"]["mlp"]["wi"]["kernel"]).sum()) > 0
  _, fm = build(scan_layers=False, remat="full")
  g, out = logits_and_grads(fm)(params)  # same parameter tree, unrolled loop
  np.testing.assert_allclose(out, ref, atol=1e-5)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


def test_dropout_is_stochastic_only_with_a_key(tiny):
  c, _, params, f = tiny
  args = inputs(c)
  _, fm = build(dropout=0.5)
  f_drop = forward(fm)
  a = f_drop(params, *args, dropout_key=jax.random.key(0))
  np.testing.assert_array_equal(a, f_drop(params, *args, dropout_key=jax.random.key(0)))
  assert float(jnp.abs(a - f(params, *args)).max()) > 1e-3


def test_wrong_token_counts_are_rejected(tiny):
  c, fm, params, _ = tiny
  tokens, tokens_lo, text, text_len = inputs(c)
  model = fm.bind(params)
  with pytest.raises(ValueError, match="expected 4 low-res tokens"):
    model(tokens, tokens_lo[:, :3], text, text_len)
  with pytest.raises(ValueError, match="expected 16 high-res tokens"):
    model(tokens[:, :5], tokens_lo, text, text_len)


def test_configs_validate_and_bad_sr_settings_are_reported():
  for mod in (sr_tiny, sr_268m, common_sr):
    c = mod.get_config()
    validate(c)
    check_superres(c.model)
  c = sr_tiny.get_config()
  c.model.lowres_grid_size = 8
  with pytest.raises(ConfigError, match="exceeds model.grid_size"):
    check_superres(c.model)
  c = sr_268m.get_config()
  c.model.update(dict(attention="cudnn", text_length=96))
  with pytest.raises(ConfigError, match="KV length .* = 352"):
    check_superres(c.model)
  c = sr_tiny.get_config()
  c.model.lowres_num_layer = 2
  with pytest.raises(ConfigError, match="did you mean config.model.lowres_num_layers"):
    validate(c)


def test_flops_match_xla_count_of_the_matmuls():
  # Wide enough that matmuls dominate XLA's count (which also counts elementwise ops);
  # unrolled because XLA counts a scanned loop body once, not once per layer.
  c, fm = build(hidden_size=256, num_heads=4, head_dim=64, mlp_dim=1024, text_dim=256,
                   text_length=16, grid_size=8, scan_layers=False)
  args = inputs(c, b=1)
  cost = jax.jit(lambda p: fm.bind(p)(*args)).lower(fm.abstract_params()).cost_analysis()
  analytic = sr_transformer_train_flops(c.model) / 3
  assert 0.98 < cost["flops"] / analytic < 1.05, (cost["flops"], analytic)


def _dot_flops(jaxpr, batched: bool) -> float:
  """FLOPs of the dot_generals of a jaxpr and its sub-jaxprs that have batch dimensions
  (`batched`: attention's score and value products, batched over examples and heads) or none
  (projections)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract, _), (batch, _) = eqn.params["dimension_numbers"]
      if bool(batch) == batched:
        k = np.prod([eqn.invars[0].aval.shape[d] for d in contract])
        total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * k
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          total += _dot_flops(inner, batched) * eqn.params.get("length", 1)
  return total


def test_attention_flops_match_the_batched_products_of_the_traced_model():
  """The attention-only count (benchmarks/profile_step.py's floor) against the score and value
  products found in the model's own jaxpr, and the rest against its other matmuls."""
  c, fm = build(hidden_size=64, num_heads=2, head_dim=32, mlp_dim=128, text_dim=64,
                text_length=16, grid_size=8, scan_layers=False, attention="xla")
  args = inputs(c, b=1)
  jaxpr = jax.make_jaxpr(lambda p: fm.bind(p)(*args))(fm.abstract_params()).jaxpr
  attention = sr_transformer_train_flops(c.model, attention_only=True) / 3
  assert _dot_flops(jaxpr, batched=True) == attention > 0
  assert _dot_flops(jaxpr, batched=False) == sr_transformer_train_flops(c.model) / 3 - attention


def test_decode_with_cross_attention_cache_equals_context(tiny):
  c, fm, params, _ = tiny
  tokens, tokens_lo, text, text_len = inputs(c)
  model = fm.bind(params)
  ctx, ctx_len = model.encode_context(tokens_lo, text, text_len)
  np.testing.assert_allclose(
      model.decode(tokens, None, ctx_len, cache=model.stack.cross_cache(ctx)),
      model.decode(tokens, ctx, ctx_len), atol=1e-5)


def test_upsample_grid_gives_each_cell_its_covering_low_res_cell():
  from muse_jax.models.superres import upsample_grid
  x = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)  # 2x2 grids, 3 channels
  up = np.asarray(upsample_grid(x, 16)).reshape(2, 4, 4, 3)
  for i in range(4):
    for j in range(4):
      np.testing.assert_array_equal(up[:, i, j], np.asarray(x)[:, (i // 2) * 2 + j // 2])
  with pytest.raises(ValueError, match="cannot upsample"):
    upsample_grid(x, 9)  # 3x3 is not a multiple of 2x2


def test_lowres_skip_adds_the_covering_low_res_token_to_each_input(tiny):
  c, fm_plain, params, _ = tiny
  _, fm = build(lowres_skip=True)  # no new parameters: the same params bind
  tokens, tokens_lo, text, text_len = inputs(c)
  model, plain = fm.bind(params), fm_plain.bind(params)
  ctx, ctx_len = model.encode_context(tokens_lo, text, text_len)
  with_skip = model.decode(tokens, ctx, ctx_len)
  assert np.abs(np.asarray(with_skip) - np.asarray(plain.decode(tokens, ctx, ctx_len))).max() > 1e-3
  # The skip is exactly "x + upsampled low-res rows": zeroing those rows of the context for the
  # skip only (the cross-attention still sees them through the cache) gives the plain model.
  cache = model.stack.cross_cache(ctx)
  np.testing.assert_allclose(model.decode(tokens, ctx, ctx_len, cache=cache), with_skip, atol=1e-5)
  zeroed = ctx.at[:, :c.model.lowres_grid_size ** 2].set(0)
  np.testing.assert_allclose(model.decode(tokens, zeroed, ctx_len, cache=cache),
                             plain.decode(tokens, ctx, ctx_len), atol=1e-5)
  # The full model (training) takes the same path.
  np.testing.assert_allclose(model(tokens, tokens_lo, text, text_len), with_skip, atol=1e-5)
  with pytest.raises(ValueError, match="pass the context"):
    model.decode(tokens, None, ctx_len, cache=cache)
  with pytest.raises(ValueError, match="multiple of lowres_grid_size"):
    build(lowres_skip=True, grid_size=6, lowres_grid_size=4)


def test_text_position_embedding_is_added_to_the_text_rows_only():
  c, fm = build(text_pos_embed=True)
  params = random_params(fm, seed=3)
  off = {k: v for k, v in params.items() if k != "text_pos_embed"}
  _, fm_off = build()
  tokens, tokens_lo, text, text_len = inputs(c)
  on, on_len = forward(fm, "encode_context")(params, tokens_lo, text, text_len)
  ref, ref_len = forward(fm_off, "encode_context")(off, tokens_lo, text, text_len)
  t_lo = c.model.lowres_grid_size ** 2
  np.testing.assert_array_equal(on_len, ref_len)
  np.testing.assert_allclose(on[:, :t_lo], ref[:, :t_lo], atol=1e-6)
  # row 0 has all its text valid; row 2 is the null condition, untouched
  np.testing.assert_allclose(on[0, t_lo:], ref[0, t_lo:] + params["text_pos_embed"], atol=1e-5)
  np.testing.assert_allclose(on[2], ref[2], atol=1e-6)
