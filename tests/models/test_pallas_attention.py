"""The Pallas attention kernel (interpreted on CPU) against float64 NumPy, and its selection."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from muse_jax.models import layers as L
from muse_jax.models import pallas_attention as PA


def numpy_attention(q, k, v, lengths=None):
  """float64 softmax(q k^T / sqrt(H)) v over [B, T, N, H] arrays, keys >= lengths masked."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  s = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
  if lengths is not None:
    valid = np.arange(k.shape[1])[None, :] < np.asarray(lengths)[:, None]
    s = np.where(valid[:, None, None, :], s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bnts,bsnh->btnh", p, v)


def bf16(rng, shape):
  return jnp.asarray(rng.normal(size=shape), jnp.bfloat16)


def test_cross_attention_with_lengths_matches_numpy():
  # 128 queries (two blocks of 64) and 256 keys (two blocks of 128): the online softmax runs
  # across blocks; length 130 ends just inside the second block, 3 inside the first.
  rng = np.random.default_rng(0)
  q, k, v = bf16(rng, (3, 128, 2, 16)), bf16(rng, (3, 256, 2, 16)), bf16(rng, (3, 256, 2, 16))
  lengths = jnp.array([256, 130, 3], jnp.int32)
  out = PA.attention(q, k, v, lengths)
  assert out.shape == q.shape and out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), numpy_attention(q, k, v, lengths),
                             atol=2e-2, rtol=2e-2)
  # Masked keys have no influence: changing them leaves the output unchanged.
  k2 = k.at[1, 130:].set(100.0).at[2, 3:].set(-100.0)
  np.testing.assert_array_equal(np.asarray(PA.attention(q, k2, v, lengths), np.float32),
                                np.asarray(out, np.float32))


def test_fused_qkv_self_attention_and_gradient():
  rng = np.random.default_rng(1)
  qkv = bf16(rng, (2, 64, 3, 2, 32))
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  out = PA.qkv_attention(qkv)
  np.testing.assert_allclose(np.asarray(out, np.float32), numpy_attention(q, k, v),
                             atol=2e-2, rtol=2e-2)
  w = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
  grad = jax.grad(lambda x: jnp.sum(PA.qkv_attention(x).astype(jnp.float32) * w))(qkv)
  want = jax.grad(lambda x: jnp.sum(jax.nn.dot_product_attention(
      x[:, :, 0].astype(jnp.float32), x[:, :, 1].astype(jnp.float32),
      x[:, :, 2].astype(jnp.float32)) * w))(qkv)
  np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(want, np.float32),
                             atol=3e-2, rtol=3e-2)


def test_rejects_shapes_the_kernel_cannot_take():
  rng = np.random.default_rng(2)
  with pytest.raises(ValueError, match="power-of-two"):
    PA.attention(bf16(rng, (1, 32, 1, 16)), bf16(rng, (1, 77, 1, 16)), bf16(rng, (1, 77, 1, 16)))
  with pytest.raises(ValueError, match=r"\[B, T, 3, N, H\]"):
    PA.qkv_attention(bf16(rng, (1, 32, 2, 1, 16)))


def test_resolve_attention(monkeypatch):
  bf = jnp.bfloat16
  assert L.resolve_attention("pallas", 256, 128, 64, bf) == "xla"  # CPU: what auto picks
  monkeypatch.setattr(L, "_on_gpu", lambda: True)
  assert L.resolve_attention("pallas", 256, 128, 64, bf) == "pallas"
  assert L.resolve_attention("pallas", 4096, 4096, 64, bf) == "cudnn"  # longer than 1024
  assert L.resolve_attention("pallas", 256, 77, 64, bf) == "cudnn"     # not a power of two
  assert L.resolve_attention("pallas", 256, 128, 64, jnp.float32) == "xla"
  assert L.resolve_attention("auto", 256, 128, 64, bf) == "cudnn"
  with pytest.raises(ValueError, match="choose auto"):
    L.resolve_attention("flash", 256, 128, 64, bf)


def test_module_uses_the_kernel_on_the_fused_projection(monkeypatch):
  """With `pallas` selected (a GPU, faked here; the kernel is interpreted), self-attention
  hands the whole fused qkv projection to the kernel and matches the XLA path."""
  monkeypatch.setattr(L, "_on_gpu", lambda: True)
  calls = []
  real = PA.qkv_attention
  monkeypatch.setattr(PA, "qkv_attention", lambda qkv: calls.append(qkv.shape) or real(qkv))
  p = L.Precision.from_names("bfloat16", "float32")
  attn = L.MultiHeadAttention(32, 2, 16, rngs=nnx.Rngs(0), precision=p, implementation="xla")
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 32, 32)), jnp.bfloat16)
  want = attn(x)
  attn.implementation = "pallas"
  got = attn(x)
  assert calls == [(2, 32, 3, 2, 16)]
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                             atol=3e-2, rtol=3e-2)
