"""Flash attention forward as one Pallas (Triton) kernel, for sampling on NVIDIA GPUs.

Why: a sampler's attention is tiny (aMUSEd size: 2 x 16 heads x 256 x 256 x 64 per layer and
step) and pure latency. cuDNN's call costs a workspace memset besides its kernel, and its q, k,
v must first be split out of the fused qkv projection by a copy kernel. This kernel reads q, k,
v straight from the fused `[B, T, 3, N, H]` projection (`qkv_attention`) or from separate
arrays (`attention`), and masks keys at or beyond `kv_lengths`.

One program per (query block, batch row, head): it keeps its query block, loops over key blocks
with the online softmax (running max and sum in fp32, exp2 with log2(e) folded into the scale)
and writes `[block_q, H]` of the `[B, T, N, H]` output. Blocks must divide the sequence lengths
and Triton needs powers of two: `supported()` says whether a shape qualifies.

Differentiable: the backward pass is XLA's (`jax.nn.dot_product_attention`, a recompute), so
training with it is correct but not fast; the trainers use cuDNN. `pallas_call` is not
partitioned by XLA's sharding propagation, so under a multi-device `jit` its operands are
gathered; the samplers run on one device. Off NVIDIA GPUs (or with `interpret=True`) the same
kernel is interpreted: the CPU tests.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

MASK_VALUE = -1e30  # finite: a fully masked block yields zeros, never NaN


def _pow2(n: int) -> bool:
  return n > 0 and n & (n - 1) == 0


def block_sizes(q_len: int, kv_len: int) -> tuple[int, int]:
  """(block_q, block_k) for these lengths: at most 64 query rows and 128 keys per block."""
  return min(64, q_len), min(128, kv_len)


def supported(q_len: int, kv_len: int, head_dim: int, dtype) -> bool:
  """Whether the kernel takes this shape: bf16/fp16 and power-of-two lengths and head_dim
  (>= 16, Triton's smallest dot)."""
  return (jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and _pow2(head_dim)
          and head_dim >= 16 and _pow2(q_len) and q_len >= 16 and _pow2(kv_len)
          and kv_len >= 16)


def _xla_attention(q, k, v, kv_lengths=None):
  """The same attention through XLA (`jax.nn.dot_product_attention`): the backward pass."""
  return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=kv_lengths,
                                      implementation="xla")


def _kernel(valid_ref, q_ref, k_ref, v_ref, o_ref, *, block_k: int, scale: float):
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plgpu
  q = q_ref[...]
  block_q, head_dim = q.shape

  def body(j, carry):
    acc, m, l = carry
    keys = pl.dslice(j * block_k, block_k)
    s = plgpu.dot(q, k_ref[keys, :], trans_b=True) * scale  # [block_q, block_k] f32, log2 units
    if valid_ref is not None:
      s = jnp.where(valid_ref[keys][None, :] != 0, s, MASK_VALUE)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    p = jnp.exp2(s - m_new[:, None])
    alpha = jnp.exp2(m - m_new)
    acc = acc * alpha[:, None] + plgpu.dot(p.astype(q.dtype), v_ref[keys, :])
    return acc, m_new, l * alpha + jnp.sum(p, axis=1)

  init = (jnp.zeros((block_q, head_dim), jnp.float32),
          jnp.full((block_q,), MASK_VALUE, jnp.float32), jnp.zeros((block_q,), jnp.float32))
  acc, _, l = jax.lax.fori_loop(0, k_ref.shape[0] // block_k, body, init)
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)


def _call(arrays, specs, valid, out_shape, q_len, kv_len, batch, heads, head_dim, interpret):
  """pallas_call over grid (query block, batch, head); `specs(bq, kv_len)` gives the input
  specs (after the optional key-validity row)."""
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plgpu
  if interpret is None:  # Triton needs an NVIDIA GPU; elsewhere the kernel is interpreted
    interpret = jax.default_backend() != "gpu"
  bq, bk = block_sizes(q_len, kv_len)
  scale = math.log2(math.e) / math.sqrt(head_dim)
  in_specs = list(specs(bq, kv_len))
  operands = list(arrays)
  if valid is not None:
    in_specs = [pl.BlockSpec((None, kv_len), lambda i, b, n: (b, 0))] + in_specs
    operands = [valid] + operands
    kernel = functools.partial(_kernel, block_k=bk, scale=scale)
  else:
    kernel = functools.partial(lambda *refs, **kw: _kernel(None, *refs, **kw), block_k=bk,
                               scale=scale)
  return pl.pallas_call(
      kernel, grid=(q_len // bq, batch, heads), in_specs=in_specs,
      out_specs=pl.BlockSpec((None, bq, None, head_dim), lambda i, b, n: (b, i, n, 0)),
      out_shape=out_shape, interpret=interpret, name="muse_flash_attention",
      compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
  )(*operands)


def _valid(kv_lengths, kv_len):
  if kv_lengths is None:
    return None
  return (jnp.arange(kv_len)[None, :] < kv_lengths[:, None]).astype(jnp.int32)


def _check(q_len, kv_len, head_dim, dtype):
  if not supported(q_len, kv_len, head_dim, dtype):
    raise ValueError(f"pallas attention needs bf16/fp16 and power-of-two lengths and head_dim "
                     f">= 16; got q_len={q_len} kv_len={kv_len} head_dim={head_dim} {dtype}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def attention(q, k, v, kv_lengths=None, interpret: bool | None = None):
  """softmax(q k^T / sqrt(H)) v for q [B, T, N, H], k and v [B, S, N, H]; keys at positions >=
  `kv_lengths` [B] (if given) are masked. Returns [B, T, N, H] in q's dtype."""
  (b, t, n, h), s = q.shape, k.shape[1]
  _check(t, s, h, q.dtype)

  def specs(bq, kv_len):
    from jax.experimental import pallas as pl
    return (pl.BlockSpec((None, bq, None, h), lambda i, bb, nn: (bb, i, nn, 0)),
            pl.BlockSpec((None, kv_len, None, h), lambda i, bb, nn: (bb, 0, nn, 0)),
            pl.BlockSpec((None, kv_len, None, h), lambda i, bb, nn: (bb, 0, nn, 0)))

  return _call((q, k, v), specs, _valid(kv_lengths, s), jax.ShapeDtypeStruct(q.shape, q.dtype),
               t, s, b, n, h, interpret)


def _attention_fwd(q, k, v, kv_lengths, interpret):
  return attention(q, k, v, kv_lengths, interpret), (q, k, v, kv_lengths)


def _attention_bwd(interpret, res, g):
  q, k, v, kv_lengths = res
  _, vjp = jax.vjp(lambda a, b, c: _xla_attention(a, b, c, kv_lengths), q, k, v)
  return (*vjp(g), None)


attention.defvjp(_attention_fwd, _attention_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def qkv_attention(qkv, interpret: bool | None = None):
  """Self-attention of a fused projection qkv [B, T, 3, N, H] (q, k, v along axis 2), read in
  place (no split copies). Returns [B, T, N, H]."""
  b, t, three, n, h = qkv.shape
  if three != 3:
    raise ValueError(f"qkv_attention expects [B, T, 3, N, H], got {qkv.shape}")
  _check(t, t, h, qkv.dtype)

  def specs(bq, kv_len):
    from jax.experimental import pallas as pl
    return (pl.BlockSpec((None, bq, None, None, h), lambda i, bb, nn: (bb, i, 0, nn, 0)),
            pl.BlockSpec((None, kv_len, None, None, h), lambda i, bb, nn: (bb, 0, 1, nn, 0)),
            pl.BlockSpec((None, kv_len, None, None, h), lambda i, bb, nn: (bb, 0, 2, nn, 0)))

  return _call((qkv, qkv, qkv), specs, None, jax.ShapeDtypeStruct((b, t, n, h), qkv.dtype),
               t, t, b, n, h, interpret)


def _qkv_fwd(qkv, interpret):
  return qkv_attention(qkv, interpret), qkv


def _qkv_bwd(interpret, qkv, g):
  _, vjp = jax.vjp(lambda x: _xla_attention(x[:, :, 0], x[:, :, 1], x[:, :, 2]), qkv)
  return vjp(g)


qkv_attention.defvjp(_qkv_fwd, _qkv_bwd)

