import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from muse_jax.models import quantizer as Q


def _vq(codebook):
  vq = Q.VectorQuantizer(codebook.shape[0], codebook.shape[1], rngs=nnx.Rngs(0), beta=0.25)
  vq.embedding[...] = jnp.asarray(codebook)
  return vq


def test_nearest_code_and_losses():
  codebook = np.array([[0., 0.], [1., 0.], [0., 1.], [5., 5.]], np.float32)
  z = np.array([[[0.9, 0.2], [0.1, 0.1]], [[0.2, 0.7], [4.0, 6.0]]], np.float32)  # [2, 2, 2]
  out = _vq(codebook)(jnp.asarray(z))
  np.testing.assert_array_equal(out.ids, [[1, 0], [2, 3]])
  e = codebook[np.asarray(out.ids)]
  np.testing.assert_allclose(out.quantized, e, atol=1e-6)
  mse = np.mean((z - e) ** 2)
  np.testing.assert_allclose(out.codebook_loss, mse, rtol=1e-6)
  np.testing.assert_allclose(out.commitment_loss, 0.25 * mse, rtol=1e-6)
  np.testing.assert_array_equal(out.counts, [1, 1, 1, 1])


def test_straight_through_and_loss_gradients():
  codebook = np.array([[0., 0.], [1., 0.], [0., 1.]], np.float32)
  vq = _vq(codebook)
  z = jnp.array([[0.8, 0.1], [0.2, 0.9], [0.1, -0.1]])
  w = jnp.array([[1., 2.], [3., 4.], [5., 6.]])
  # straight-through: d(sum(w * z_q))/dz = w exactly.
  g = jax.grad(lambda z: jnp.sum(w * vq(z).quantized))(z)
  np.testing.assert_allclose(g, w)
  # commitment loss moves only z; codebook loss moves only the codebook.
  e = codebook[[1, 2, 0]]
  gz = jax.grad(lambda z: vq(z).commitment_loss)(z)
  np.testing.assert_allclose(gz, 0.25 * 2 * (z - e) / z.size, rtol=1e-5)
  gz2 = jax.grad(lambda z: vq(z).codebook_loss)(z)
  np.testing.assert_allclose(gz2, 0.0)

  graphdef, state = nnx.split(vq)

  def cb_loss(state):
    return nnx.merge(graphdef, state)(z).codebook_loss
  ge = jax.grad(cb_loss)(state)["embedding"][...]
  want = np.zeros_like(codebook)
  for i, k in enumerate([1, 2, 0]):
    want[k] += 2 * (e[i] - np.asarray(z[i])) / z.size
  np.testing.assert_allclose(ge, want, rtol=1e-5, atol=1e-7)


def test_usage_metrics_constructed():
  k = 8
  # four codes used equally, four unused: perplexity 4, half the codebook used.
  ids = jnp.array([0, 1, 2, 3] * 5)
  m = Q.usage_metrics(Q.code_counts(ids, k))
  np.testing.assert_allclose(m["codebook_perplexity"], 4.0, rtol=1e-6)
  np.testing.assert_allclose(m["codebook_used_fraction"], 0.5)
  # skewed: p = (3/4, 1/4) -> exp(H)
  m = Q.usage_metrics(Q.code_counts(jnp.array([5, 5, 5, 7]), k))
  h = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
  np.testing.assert_allclose(m["codebook_perplexity"], np.exp(h), rtol=1e-6)
  np.testing.assert_allclose(m["codebook_used_fraction"], 2 / 8)
  # a single code: perplexity 1.
  m = Q.usage_metrics(Q.code_counts(jnp.zeros((10,), jnp.int32), k))
  np.testing.assert_allclose(m["codebook_perplexity"], 1.0, rtol=1e-6)


def test_dead_code_restart():
  k, d = 6, 3
  codebook = jnp.arange(k * d, dtype=jnp.float32).reshape(k, d)
  ema = Q.update_usage_ema(jnp.full((k,), 1.0 / k), Q.code_counts(jnp.array([0, 0, 1, 2]), k),
                           decay=0.0)
  np.testing.assert_allclose(ema, [0.5, 0.25, 0.25, 0, 0, 0])
  latents = 100.0 + jnp.arange(4 * 5 * d, dtype=jnp.float32).reshape(4, 5, d)
  new, new_ema, n = Q.restart_dead_codes(codebook, ema, latents, jax.random.key(0))
  assert int(n) == 3
  np.testing.assert_array_equal(new[:3], codebook[:3])
  rows = np.asarray(latents).reshape(-1, d)
  for r in np.asarray(new[3:]):
    assert any(np.array_equal(r, x) for x in rows)
  np.testing.assert_allclose(new_ema[3:], 1.0 / k)
  np.testing.assert_allclose(new_ema[:3], ema[:3])


def test_l2_norm_lookup_is_cosine_and_unit():
  """norm="l2": the nearest code is the one of highest cosine (not Euclidean) similarity, and
  quantized vectors, lookups and losses are those of the unit vectors."""
  codebook = np.array([[10., 0.], [0.5, 0.5], [0., -3.]], np.float32)
  z = jnp.array([[1.0, 0.1], [0.2, -0.1], [0.3, 0.35]])
  plain = _vq(codebook)(z)
  np.testing.assert_array_equal(plain.ids, [1, 1, 1])  # Euclidean: the short code is nearest
  vq = Q.VectorQuantizer(3, 2, rngs=nnx.Rngs(0), beta=0.25, norm="l2")
  vq.embedding[...] = jnp.asarray(codebook)
  out = vq(z)
  np.testing.assert_array_equal(out.ids, [0, 0, 1])
  unit = codebook / np.linalg.norm(codebook, axis=1, keepdims=True)
  zn = np.asarray(z) / np.linalg.norm(np.asarray(z), axis=1, keepdims=True)
  e = unit[np.asarray(out.ids)]
  np.testing.assert_allclose(out.quantized, e, atol=1e-6)
  np.testing.assert_allclose(vq.lookup(out.ids), e, atol=1e-6)
  np.testing.assert_array_equal(vq.nearest(z), out.ids)
  np.testing.assert_array_equal(vq.nearest(7.0 * z), out.ids)  # scale-invariant
  mse = np.mean((zn - e) ** 2)
  np.testing.assert_allclose(out.codebook_loss, mse, rtol=1e-5)
  np.testing.assert_allclose(out.commitment_loss, 0.25 * mse, rtol=1e-5)
  # Straight-through at the normalised latent: the gradient is that of sum(w * z / |z|).
  w = jnp.array([[1., 2.], [3., 4.], [5., 6.]])
  g = jax.grad(lambda z: jnp.sum(w * vq(z).quantized))(z)
  want = jax.grad(lambda z: jnp.sum(w * z / jnp.linalg.norm(z, axis=-1, keepdims=True)))(z)
  np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5)


def test_l2_norm_rejects_unknown():
  with pytest.raises(ValueError, match="codebook norm"):
    Q.VectorQuantizer(4, 2, rngs=nnx.Rngs(0), norm="L2")
  np.testing.assert_allclose(Q.l2_normalize(jnp.array([[3., 4.], [0., 0.]])),
                             [[0.6, 0.8], [0., 0.]])
