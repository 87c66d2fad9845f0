"""Flash attention forward as one Pallas (Triton) kernel, for sampling on NVIDIA GPUs.

Why: a sampler's attention is tiny (aMUSEd size: 2 x 16 heads x 256 x 256 x 64 per layer and
step) and pure latency. cuDNN's call costs a workspace memset besides its kernel, and its q, k,
v must first be split out of the fused qkv projection by a copy kernel. This kernel reads q, k,
v straight from the fused `[B, T, 3, N, H]` projection (`qkv_attention`), k and v from a
cross-attention's `[B, S, 2, N, H]` projection (`kv_attention`), or separate arrays
(`attention`), and masks keys at or beyond `kv_lengths`.

One program per (query block, batch row, head): it keeps its query block, loops over key blocks
with the online softmax (running max and sum in fp32, exp2 with log2(e) folded into the scale)
and writes `[block_q, H]` of the `[B, T, N, H]` output. Blocks must divide the sequence lengths
and Triton needs powers of two: `supported()` says whether a shape qualifies.

Differentiable: under a gradient the forward also saves each query's log-sum-exp, and the
backward runs the kernels of muse_jax/models/pallas_attention_grad.py. `pallas_call` is not
partitioned by XLA's sharding propagation: under a multi-device `jit` the callers in
muse_jax/models/layers.py run it per shard (`per_shard`), else its operands would be gathered.
Off NVIDIA GPUs (or with `interpret=True`) the same kernel is interpreted: the CPU tests.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from muse_jax.models import pallas_attention_grad as G

MASK_VALUE = G.MASK_VALUE  # finite: a fully masked block yields zeros, never NaN


def _pow2(n: int) -> bool:
  return n > 0 and n & (n - 1) == 0


# (block_q, block_k, num_warps, num_stages) of the forward kernel, as in pallas_attention_grad.
FORWARD_BLOCKS = (64, 128, 4, 2)


def supported(q_len: int, kv_len: int, head_dim: int, dtype) -> bool:
  """Whether the kernel takes this shape: bf16/fp16 and power-of-two lengths and head_dim
  (>= 16, Triton's smallest dot)."""
  return (jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and _pow2(head_dim)
          and head_dim >= 16 and _pow2(q_len) and q_len >= 16 and _pow2(kv_len)
          and kv_len >= 16)


def _kernel(valid_ref, q_ref, k_ref, v_ref, o_ref, lse_ref=None, *, block_k: int, scale: float):
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
  acc, m, l = jax.lax.fori_loop(0, k_ref.shape[0] // block_k, body, init)
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
  if lse_ref is not None:  # for the backward (pallas_attention_grad.py)
    lse_ref[...] = m + jnp.log2(l)


def _forward(arrays, specs, valid, interpret, with_lse: bool):
  """pallas_call over grid (query block, batch, head). `arrays` are q, k, v (or the fused qkv
  three times) and `specs` their `operand_spec` makers. Returns the output [B, T, N, H], and
  with `with_lse` also the log-sum-exp [B, N, T] f32 of each query's scaled scores (base 2)."""
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plgpu
  interpret = G.interpreted(interpret)
  q_spec, k_spec, v_spec = specs
  batch, q_len = arrays[0].shape[:2]
  kv_len, (heads, head_dim) = arrays[1].shape[1], arrays[0].shape[-2:]
  bq, bk, warps, stages = G.blocks(FORWARD_BLOCKS, q_len, kv_len)
  kernel = functools.partial(_kernel, block_k=bk,
                             scale=math.log2(math.e) / math.sqrt(head_dim))
  in_specs, operands = [q_spec(bq), k_spec(None), v_spec(None)], list(arrays)
  if valid is not None:
    in_specs, operands = [G.row_spec(kv_len, None, 1)] + in_specs, [valid] + operands
  else:
    kernel = functools.partial(G.without_valid, kernel)
  out_specs = [G.operand_spec(q_len, head_dim)(bq)]
  out_shape = [jax.ShapeDtypeStruct((batch, q_len, heads, head_dim), arrays[0].dtype)]
  if with_lse:
    out_specs.append(G.row_spec(q_len, bq, 2))
    out_shape.append(jax.ShapeDtypeStruct((batch, heads, q_len), jnp.float32))
  out = pl.pallas_call(
      kernel, grid=(q_len // bq, batch, heads), in_specs=in_specs, out_specs=out_specs,
      out_shape=out_shape, interpret=interpret, name="muse_flash_attention",
      compiler_params=plgpu.CompilerParams(num_warps=warps, num_stages=stages),
  )(*operands)
  return out if with_lse else out[0]


def _valid(kv_lengths, kv_len):
  if kv_lengths is None:
    return None
  return (jnp.arange(kv_len)[None, :] < kv_lengths[:, None]).astype(jnp.int32)


def _check(q_len, kv_len, head_dim, dtype):
  if not supported(q_len, kv_len, head_dim, dtype):
    raise ValueError(f"pallas attention needs bf16/fp16 and power-of-two lengths and head_dim "
                     f">= 16; got q_len={q_len} kv_len={kv_len} head_dim={head_dim} {dtype}")


def _separate_specs(q, k):
  return (G.operand_spec(q.shape[1], q.shape[-1]), G.operand_spec(k.shape[1], k.shape[-1]),
          G.operand_spec(k.shape[1], k.shape[-1]))


def _fused_specs(qkv):
  t, h = qkv.shape[1], qkv.shape[-1]
  return tuple(G.operand_spec(t, h, slot) for slot in range(3))


def _separate_forward(q, k, v, kv_lengths, interpret, with_lse):
  (_, t, _, h), s = q.shape, k.shape[1]
  _check(t, s, h, q.dtype)
  return _forward((q, k, v), _separate_specs(q, k), _valid(kv_lengths, s), interpret, with_lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def attention(q, k, v, kv_lengths=None, interpret: bool | None = None):
  """softmax(q k^T / sqrt(H)) v for q [B, T, N, H], k and v [B, S, N, H]; keys at positions >=
  `kv_lengths` [B] (if given) are masked. Returns [B, T, N, H] in q's dtype."""
  return _separate_forward(q, k, v, kv_lengths, interpret, False)


def _attention_fwd(q, k, v, kv_lengths, interpret):
  o, lse = _separate_forward(q, k, v, kv_lengths, interpret, True)
  return o, (q, k, v, kv_lengths, o, lse)


def _attention_bwd(interpret, res, g):
  q, k, v, kv_lengths, o, lse = res
  dq, dk, dv = G.gradients(_separate_specs(q, k), (q, k, v), o, lse, g.astype(o.dtype),
                           _valid(kv_lengths, k.shape[1]), packed=None, interpret=interpret)
  return dq, dk, dv, None


attention.defvjp(_attention_fwd, _attention_bwd)


def _fused_forward(qkv, interpret, with_lse):
  _, t, three, _, h = qkv.shape
  if three != 3:
    raise ValueError(f"qkv_attention expects [B, T, 3, N, H], got {qkv.shape}")
  _check(t, t, h, qkv.dtype)
  return _forward((qkv,) * 3, _fused_specs(qkv), None, interpret, with_lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def qkv_attention(qkv, interpret: bool | None = None):
  """Self-attention of a fused projection qkv [B, T, 3, N, H] (q, k, v along axis 2), read in
  place (no split copies). Returns [B, T, N, H]."""
  return _fused_forward(qkv, interpret, False)


def _qkv_fwd(qkv, interpret):
  o, lse = _fused_forward(qkv, interpret, True)
  return o, (qkv, o, lse)


def _qkv_bwd(interpret, res, g):
  qkv, o, lse = res
  return (G.gradients(_fused_specs(qkv), (qkv,) * 3, o, lse, g.astype(o.dtype), None,
                      packed="qkv", interpret=interpret),)


qkv_attention.defvjp(_qkv_fwd, _qkv_bwd)


def _kv_specs(q, kv):
  s, h = kv.shape[1], kv.shape[-1]
  return (G.operand_spec(q.shape[1], q.shape[-1]), G.operand_spec(s, h, 0),
          G.operand_spec(s, h, 1))


def _kv_forward(q, kv, kv_lengths, interpret, with_lse):
  (_, t, _, h), (_, s, two, _, _) = q.shape, kv.shape
  if two != 2:
    raise ValueError(f"kv_attention expects kv [B, S, 2, N, H], got {kv.shape}")
  _check(t, s, h, q.dtype)
  return _forward((q, kv, kv), _kv_specs(q, kv), _valid(kv_lengths, s), interpret, with_lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def kv_attention(q, kv, kv_lengths=None, interpret: bool | None = None):
  """Cross-attention of q [B, T, N, H] to a packed key/value projection kv [B, S, 2, N, H]
  (k, v along axis 2), read in place; keys at positions >= `kv_lengths` [B] are masked. Its
  gradient with respect to kv is written packed, as the projection's matmul takes it."""
  return _kv_forward(q, kv, kv_lengths, interpret, False)


def _kv_fwd(q, kv, kv_lengths, interpret):
  o, lse = _kv_forward(q, kv, kv_lengths, interpret, True)
  return o, (q, kv, kv_lengths, o, lse)


def _kv_bwd(interpret, res, g):
  q, kv, kv_lengths, o, lse = res
  dq, dkv = G.gradients(_kv_specs(q, kv), (q, kv, kv), o, lse, g.astype(o.dtype),
                        _valid(kv_lengths, kv.shape[1]), packed="kv", interpret=interpret)
  return dq, dkv, None


kv_attention.defvjp(_kv_fwd, _kv_bwd)
