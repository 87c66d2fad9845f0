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


def numpy_attention_grads(q, k, v, do, lengths=None):
  """float64 dq, dk, dv of `numpy_attention` for the output cotangent `do`, by the softmax
  Jacobian written out: dS = P * (dP - rowsum(dP * P))."""
  q, k, v, do = (np.asarray(a, np.float64) for a in (q, k, v, do))
  scale = 1 / np.sqrt(q.shape[-1])
  s = np.einsum("btnh,bsnh->bnts", q, k) * scale
  if lengths is not None:
    valid = np.arange(k.shape[1])[None, :] < np.asarray(lengths)[:, None]
    s = np.where(valid[:, None, None, :], s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  dp = np.einsum("btnh,bsnh->bnts", do, v)
  ds = p * (dp - np.sum(dp * p, -1, keepdims=True))
  return (np.einsum("bnts,bsnh->btnh", ds, k) * scale, np.einsum("bnts,btnh->bsnh", ds, q) * scale,
          np.einsum("bnts,btnh->bsnh", p, do))


def rel_err(got, want):
  got = np.asarray(got, np.float64)
  return np.linalg.norm(got - want) / np.linalg.norm(want)


def test_fused_qkv_self_attention_and_gradient():
  # 128 positions: two query blocks in the forward and dq kernels, two key blocks of 64 in the
  # dk/dv kernel, so every accumulation runs across blocks.
  rng = np.random.default_rng(1)
  qkv = bf16(rng, (2, 128, 3, 2, 32))
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  out = PA.qkv_attention(qkv)
  np.testing.assert_allclose(np.asarray(out, np.float32), numpy_attention(q, k, v),
                             atol=2e-2, rtol=2e-2)
  do = bf16(rng, out.shape)
  grad = jax.grad(lambda x: jnp.sum(PA.qkv_attention(x).astype(jnp.float32)
                                    * do.astype(jnp.float32)))(qkv)
  assert grad.shape == qkv.shape and grad.dtype == jnp.bfloat16
  for slot, want in enumerate(numpy_attention_grads(q, k, v, do)):
    assert rel_err(grad[:, :, slot], want) < 1e-2, slot


def test_gradient_with_lengths_matches_numpy():
  # 128 queries, 256 keys (four blocks of 64 in the backward); lengths end inside the third
  # block, inside the first, and at the end. Masked keys get exactly zero gradient.
  rng = np.random.default_rng(4)
  q, k, v = bf16(rng, (3, 128, 2, 32)), bf16(rng, (3, 256, 2, 32)), bf16(rng, (3, 256, 2, 32))
  do = bf16(rng, q.shape)
  lengths = jnp.array([130, 3, 256], jnp.int32)
  loss = lambda q, k, v: jnp.sum(PA.attention(q, k, v, lengths).astype(jnp.float32)
                                 * do.astype(jnp.float32))
  grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
  for got, want in zip(grads, numpy_attention_grads(q, k, v, do, lengths)):
    assert got.dtype == jnp.bfloat16
    assert rel_err(got, want) < 1e-2
  dk, dv = np.asarray(grads[1], np.float32), np.asarray(grads[2], np.float32)
  assert not dk[0, 130:].any() and not dv[0, 130:].any() and not dv[1, 3:].any()
  assert np.abs(dv[1, :3]).min() > 0


def test_packed_kv_cross_attention_and_gradient():
  # 128 queries, 256 keys packed [B, S, 2, N, H]; the lengths end inside the third key block of
  # the backward, inside the first, and at the end. The kv gradient comes back packed.
  rng = np.random.default_rng(6)
  q, kv = bf16(rng, (3, 128, 2, 32)), bf16(rng, (3, 256, 2, 2, 32))
  k, v, do = kv[:, :, 0], kv[:, :, 1], bf16(rng, q.shape)
  lengths = jnp.array([130, 3, 256], jnp.int32)
  np.testing.assert_allclose(np.asarray(PA.kv_attention(q, kv, lengths), np.float32),
                             numpy_attention(q, k, v, lengths), atol=2e-2, rtol=2e-2)
  loss = lambda q, kv: jnp.sum(PA.kv_attention(q, kv, lengths).astype(jnp.float32)
                               * do.astype(jnp.float32))
  dq, dkv = jax.grad(loss, argnums=(0, 1))(q, kv)
  assert dkv.shape == kv.shape and dkv.dtype == jnp.bfloat16
  want = numpy_attention_grads(q, k, v, do, lengths)
  for got, w in zip((dq, dkv[:, :, 0], dkv[:, :, 1]), want):
    assert rel_err(got, w) < 1e-2
  assert not np.asarray(dkv[0, 130:], np.float32).any()


def test_rejects_shapes_the_kernel_cannot_take():
  rng = np.random.default_rng(2)
  with pytest.raises(ValueError, match="power-of-two"):
    PA.attention(bf16(rng, (1, 32, 1, 16)), bf16(rng, (1, 77, 1, 16)), bf16(rng, (1, 77, 1, 16)))
  with pytest.raises(ValueError, match=r"\[B, T, 3, N, H\]"):
    PA.qkv_attention(bf16(rng, (1, 32, 2, 1, 16)))
  with pytest.raises(ValueError, match=r"\[B, S, 2, N, H\]"):
    PA.kv_attention(bf16(rng, (1, 32, 1, 16)), bf16(rng, (1, 32, 3, 1, 16)))


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


def test_module_under_a_mesh_runs_the_kernel_per_shard(monkeypatch):
  """Under a 2 x 2 x 2 mesh the kernel gets each device's batch rows and heads (shard_map),
  with the values and gradients of one device."""
  from configs import tiny
  from muse_jax.parallel import sharding as shd
  from muse_jax.parallel.mesh import make_mesh
  monkeypatch.setattr(L, "_on_gpu", lambda: True)
  shapes = []
  real = PA.qkv_attention
  monkeypatch.setattr(PA, "qkv_attention", lambda qkv: shapes.append(qkv.shape) or real(qkv))
  p = L.Precision.from_names("bfloat16", "float32")
  attn = L.MultiHeadAttention(32, 2, 16, rngs=nnx.Rngs(0), precision=p,
                              implementation="pallas")
  x = jnp.asarray(np.random.default_rng(5).normal(size=(4, 32, 32)), jnp.bfloat16)
  loss = lambda m, x: jnp.sum(m(x).astype(jnp.float32) ** 2)
  want_loss, want_grad = nnx.value_and_grad(loss)(attn, x)
  mesh = make_mesh(dict(data=2, fsdp=2, tensor=2))
  with shd.activation_rules(mesh, tiny.get_config().mesh.rules):
    got_loss, got_grad = nnx.jit(nnx.value_and_grad(loss))(attn, x)
  assert (1, 32, 3, 1, 16) in shapes
  np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-2)
  for g, w in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):
    assert rel_err(g, np.asarray(w, np.float64)) < 2e-2


def test_cross_attention_module_hands_the_packed_kv_to_the_kernel_per_shard(monkeypatch):
  """With `pallas` selected (a GPU, faked), cross-attention passes its kv projection whole to
  `kv_attention`, under a 2 x 2 x 2 mesh each device's batch rows and heads of it, and matches
  the XLA path on one device, values and gradients, with padded text."""
  from configs import tiny
  from muse_jax.parallel import sharding as shd
  from muse_jax.parallel.mesh import make_mesh
  monkeypatch.setattr(L, "_on_gpu", lambda: True)
  shapes = []
  real = PA.kv_attention
  monkeypatch.setattr(PA, "kv_attention", lambda q, kv, *a: shapes.append(kv.shape) or
                      real(q, kv, *a))
  p = L.Precision.from_names("bfloat16", "float32")
  attn = L.MultiHeadAttention(32, 2, 16, rngs=nnx.Rngs(0), precision=p, kv_dim=24,
                              implementation="xla")
  rng = np.random.default_rng(7)
  x, ctx = (jnp.asarray(rng.normal(size=s), jnp.bfloat16) for s in ((4, 32, 32), (4, 16, 24)))
  lengths = jnp.array([16, 5, 9, 1], jnp.int32)
  loss = lambda m, x: jnp.sum(m(x, ctx, kv_lengths=lengths).astype(jnp.float32) ** 2)
  want_loss, want_grad = nnx.value_and_grad(loss)(attn, x)
  attn.implementation = "pallas"
  with shd.activation_rules(make_mesh(dict(data=2, fsdp=2, tensor=2)),
                            tiny.get_config().mesh.rules):
    got_loss, got_grad = nnx.jit(nnx.value_and_grad(loss))(attn, x)
  assert (1, 16, 2, 1, 16) in shapes  # one device's rows and heads
  np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-2)
  for g, w in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):
    assert rel_err(g, np.asarray(w, np.float64)) < 2e-2
