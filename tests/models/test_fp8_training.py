"""FP8 training matmuls (muse_jax/models/fp8_training.py) against float64 and float32 models."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import sr_tiny, tiny
from muse_jax.models import fp8_training as F
from muse_jax.models.functional import functionalize
from muse_jax.models.superres import SuperResTransformer
from muse_jax.models.transformer import MaskedTransformer


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_quantize_saturates_and_keeps_zeros():
  q, s = F.quantize(jnp.array([0.0, 1.0, -3.0]), F.E4M3, F.E4M3_MAX)
  assert np.float32(s) == np.float32(3.0) / np.float32(448.0)
  assert np.asarray(q, np.float64).tolist() == [0.0, 144.0, -448.0]  # 149.3 to e4m3's 144
  q, s = F.quantize(jnp.zeros((4,)), F.E5M2, F.E5M2_MAX)
  assert float(s) == 1.0 and not np.asarray(q, np.float64).any()
  # Division rounding can put the max a hair over the format's largest value: no NaN.
  q, _ = F.quantize(jnp.array([1e30, -7.0]), F.E4M3, F.E4M3_MAX)
  assert np.isfinite(np.asarray(q, np.float64)).all()


def test_dot_and_its_gradients_match_float64_to_fp8_precision():
  """x [M, 4, 24] @ w [4, 24, 2, 40] (two contracted and two output dims, as the attention's
  out projection and fused q/k/v have): e4m3 forward, e5m2 gradient."""
  k = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k[0], (64, 4, 24)).astype(jnp.bfloat16)
  w = jax.random.normal(k[1], (4, 24, 2, 40)) * 0.1
  g = jax.random.normal(k[2], (64, 2, 40)).astype(jnp.bfloat16)
  y, vjp = jax.vjp(lambda a, b: F.dot(a, b, 2), x, w)
  dx, dw = vjp(g)
  assert (y.dtype, dx.dtype, dw.dtype) == (jnp.bfloat16, jnp.bfloat16, jnp.float32)
  x64, w64, g64 = (np.asarray(a, np.float64).reshape(n, -1)
                   for a, n in ((x, 64), (w, 96), (g, 64)))
  # A few percent, and not zero (it really quantized): e4m3 keeps 3 mantissa bits, e5m2 2.
  assert 5e-3 < rel(np.asarray(y).reshape(64, -1), x64 @ w64) < 6e-2
  assert 1e-2 < rel(np.asarray(dx).reshape(64, -1), g64 @ w64.T) < 1e-1
  assert 1e-2 < rel(np.asarray(dw).reshape(96, -1), x64.T @ g64) < 1e-1


def _models(cls, config_module):
  c = config_module.get_config()
  fm, init = functionalize(lambda r: cls(c.model, rngs=r))
  c8 = config_module.get_config()
  with c8.unlocked():
    c8.model.fp8_training = True
  fm8 = functionalize(lambda r: cls(c8.model, rngs=r))[0]
  params = jax.jit(init)(jax.random.key(0))
  # The same parameters (checkpoints load either way).
  assert jax.tree.structure(fm8.abstract_params()) == jax.tree.structure(params)
  return c.model, fm, fm8, params


def _base_inputs(m, n=8, seed=1):
  k = jax.random.split(jax.random.key(seed), 3)
  tokens = jax.random.randint(k[0], (n, m.grid_size ** 2), 0, m.codebook_size + 1)
  text = jax.random.normal(k[1], (n, m.text_length, m.text_dim))
  text_len = jnp.arange(n, dtype=jnp.int32) % (m.text_length + 1)
  target = jax.random.randint(k[2], (n, m.grid_size ** 2), 0, m.codebook_size)
  return (tokens, text, text_len), target


def _loss(fm, inputs, target):
  def loss(params):
    logits = fm.bind(params)(*inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, target).mean()
  return loss


def test_base_model_gradients_track_float32_and_it_trains_as_far():
  """30 Adam steps on one batch: the FP8 model's first gradient is near the float32 model's,
  and its loss falls as far."""
  m, fm, fm8, params = _models(MaskedTransformer, tiny)
  inputs, target = _base_inputs(m, n=16, seed=2)
  tx = optax.adam(3e-3)

  def train(model):
    step_loss = _loss(model, inputs, target)

    @jax.jit
    def step(p, s):
      loss, g = jax.value_and_grad(step_loss)(p)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s, loss, g
    p, s = params, tx.init(params)
    losses, first = [], None
    for _ in range(31):  # the 31st step's loss is that of the 30 updates
      p, s, loss, g = step(p, s)
      losses.append(float(loss))
      first = g if first is None else first
    return losses, first

  (l32, g32), (l8, g8) = train(fm), train(fm8)
  assert abs(l8[0] - l32[0]) < 0.02 * l32[0]
  # e5m2 keeps 2 mantissa bits (up to 12.5% per element); at this width (32) little of that
  # averages out over a contraction, so the whole gradient is off by about 15%.
  flat = [jnp.concatenate([a.ravel() for a in jax.tree.leaves(t)]) for t in (g8, g32)]
  assert 1e-2 < rel(*flat) < 0.25, rel(*flat)
  assert l32[-1] < 0.6 * l32[0], l32
  assert abs(l8[-1] - l32[-1]) < 0.1 * (l32[0] - l32[-1]), (l32, l8)


def test_fp8_covers_the_blocks_of_both_sr_stacks_and_nothing_else():
  """The SR model builds its blocks as the base model does (whose numerics the test above
  checks): both its stacks' projections take FP8, its head and text projection do not."""
  from flax import nnx
  c = sr_tiny.get_config()
  with c.unlocked():
    c.model.fp8_training = True
  model = nnx.eval_shape(lambda: SuperResTransformer(c.model, rngs=nnx.Rngs(0)))
  for stack in (model.stack, model.lowres_stack):
    blocks = stack.blocks
    assert blocks.self_attn.qkv.precision.fp8_training
    assert blocks.mlp.wo.precision.fp8_training
  assert model.stack.blocks.cross_attn.kv.precision.fp8_training
  assert not model.head.precision.fp8_training
  assert not model.text_proj.precision.fp8_training


def test_norm_bound_holds_and_sets_the_scale():
  """RMSNorm.bound() >= max|output| for any input; a dot given it matches one that reads x."""
  from flax import nnx
  from muse_jax.models.layers import RMSNorm
  norm = RMSNorm(48, rngs=nnx.Rngs(0))
  norm.scale[...] = jax.random.uniform(jax.random.key(1), (48,), minval=-2.0, maxval=2.0)
  x = jax.random.normal(jax.random.key(2), (32, 48)) * jnp.linspace(0.01, 100, 48)
  top = int(jnp.argmax(jnp.abs(norm.scale[...])))
  x = x.at[0].set(0.0).at[1, top].set(1e4)  # an all-zero row, and a spike (|x_i|/rms ~ sqrt(D))
  y, bound = norm(x), norm.bound()
  assert float(jnp.max(jnp.abs(y))) <= float(bound)
  assert float(jnp.max(jnp.abs(y))) > 0.9 * float(bound)  # the spike reaches it
  w = jax.random.normal(jax.random.key(3), (48, 16))
  ref = np.asarray(y, np.float64) @ np.asarray(w, np.float64)
  assert rel(F.dot(y, w, 1, bound), ref) < 6e-2 and rel(F.dot(y, w), ref) < 6e-2
