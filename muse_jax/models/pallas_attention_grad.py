"""The backward pass of muse_jax/models/pallas_attention.py as two Pallas (Triton) kernels.

Why: at the base model's 256 tokens and 128 text keys, cuDNN's flash backward runs far below
the GPU's matmul rate, and it needs q, k, v split out of the fused projection and dq, dk, dv
concatenated back into its gradient, two copies per layer. These kernels read q, k, v where
they are (the fused `[B, T, 3, N, H]` self-attention projection, or a cross-attention's
`[B, S, 2, N, H]` key/value projection, included) and write dq, dk, dv straight into the
gradient's layout.

The forward saves each query row's log-sum-exp of its scores (base 2, the forward's units);
the backward recomputes the probabilities block by block from it:
- `_dq_kernel`, one program per (query block, batch row, head): accumulates dq over all key
  blocks, and writes its rows' delta = rowsum(dO * O) (fp32) for the next kernel;
- `_dkdv_kernel`, one program per (key block, batch row, head): keeps its k and v block and
  accumulates dk and dv over all query blocks.
Masked keys get probability 0, hence zero dk and dv.

Packed layouts (`packed`): for `qkv` both kernels write into one `[B, T, 3, N, H]` buffer,
indexing it with their program ids (dq at 0, then dk and dv at 1 and 2 in place, aliased); for
`kv` dq is its own array and the dk/dv kernel writes one `[B, S, 2, N, H]` buffer (0 and 1).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

MASK_VALUE = -1e30  # the forward's: exp2(MASK_VALUE - lse) is exactly 0

# (block_q, block_k, num_warps, num_stages) of each kernel. Power-of-two blocks; accumulators
# of [block, head_dim] fp32 per program, two in the dk/dv kernel. num_stages is the depth of
# Triton's software pipeline over the kernel's loop.
DKDV_BLOCKS = (64, 64, 4, 2)
DQ_BLOCKS = (64, 64, 4, 2)


def blocks(config, q_len: int, kv_len: int) -> tuple[int, int, int, int]:
  """`config` (block_q, block_k, num_warps, num_stages) with the blocks cut to the lengths."""
  bq, bk, warps, stages = config
  return min(bq, q_len), min(bk, kv_len), warps, stages


def _probs(q, k, lse, valid, scale):
  """[block_q, block_k] probabilities from the saved log-sum-exp (base 2)."""
  from jax.experimental.pallas import triton as plgpu
  s = plgpu.dot(q, k, trans_b=True) * scale
  if valid is not None:
    s = jnp.where(valid[None, :] != 0, s, MASK_VALUE)
  return jnp.exp2(s - lse[:, None])


def _dq_kernel(valid_ref, q_ref, k_ref, v_ref, o_ref, do_ref, lse_ref, *out_refs,
               block_k: int, scale: float, sm_scale: float, fused: bool):
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plgpu
  q, do, lse = q_ref[...], do_ref[...], lse_ref[...]
  delta = jnp.sum(do.astype(jnp.float32) * o_ref[...].astype(jnp.float32), axis=1)
  block_q, head_dim = q.shape

  def body(j, dq):
    keys = pl.ds(j * block_k, block_k)
    k = k_ref[keys, :]
    p = _probs(q, k, lse, None if valid_ref is None else valid_ref[keys], scale)
    ds = p * (plgpu.dot(do, v_ref[keys, :], trans_b=True) - delta[:, None])
    return dq + plgpu.dot(ds.astype(k.dtype), k)

  dq = jax.lax.fori_loop(0, k_ref.shape[0] // block_k, body,
                         jnp.zeros((block_q, head_dim), jnp.float32))
  dq = (dq * sm_scale).astype(q.dtype)
  dq_ref, delta_ref = out_refs
  delta_ref[...] = delta  # for the dk/dv kernel
  if fused:
    i, b, n = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    dq_ref[b, pl.ds(i * block_q, block_q), 0, n, :] = dq
  else:
    dq_ref[...] = dq


def _dkdv_kernel(valid_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs,
                 block_q: int, scale: float, sm_scale: float, slots: tuple | None):
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plgpu
  k, v = k_ref[...], v_ref[...]
  valid = None if valid_ref is None else valid_ref[...]
  block_k, head_dim = k.shape

  def body(i, carry):
    dk, dv = carry
    rows = pl.ds(i * block_q, block_q)
    q, do = q_ref[rows, :], do_ref[rows, :]
    p = _probs(q, k, lse_ref[rows], valid, scale)
    dv = dv + plgpu.dot(p.astype(do.dtype), do, trans_a=True)
    ds = p * (plgpu.dot(do, v, trans_b=True) - delta_ref[rows][:, None])
    return dk + plgpu.dot(ds.astype(q.dtype), q, trans_a=True), dv

  zeros = jnp.zeros((block_k, head_dim), jnp.float32)
  dk, dv = jax.lax.fori_loop(0, q_ref.shape[0] // block_q, body, (zeros, zeros))
  dk = (dk * sm_scale).astype(k.dtype)
  dv = dv.astype(v.dtype)
  if slots is not None:  # packed: the output is the last ref (after qkv's aliased input)
    out_ref = refs[-1]
    j, b, n = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    keys = pl.ds(j * block_k, block_k)
    out_ref[b, keys, slots[0], n, :] = dk
    out_ref[b, keys, slots[1], n, :] = dv
  else:
    dk_ref, dv_ref = refs
    dk_ref[...] = dk
    dv_ref[...] = dv


def operand_spec(length: int, head_dim: int, slot: int | None = None):
  """BlockSpec maker for one attention operand over the grid (block, batch row, head): the
  array is [B, L, N, H], or slot `slot` of a packed [B, L, P, N, H]. `make(rows)` takes `rows`
  positions at the grid's block index, or all `length` of them when `rows` is None."""
  def make(rows):
    from jax.experimental import pallas as pl
    size = length if rows is None else rows
    shape = (None, size, None, head_dim) if slot is None else (None, size, None, None, head_dim)

    def index(g, b, n):
      block = 0 if rows is None else g
      return (b, block, n, 0) if slot is None else (b, block, slot, n, 0)
    return pl.BlockSpec(shape, index)
  return make


def row_spec(length: int, rows: int | None, lead: int):
  """BlockSpec of a per-position array [B, L] (lead=1) or [B, N, L] (lead=2): `rows` positions
  at the grid's block index, or all of them when None."""
  from jax.experimental import pallas as pl
  size = length if rows is None else rows
  if lead == 1:
    return pl.BlockSpec((None, size), lambda g, b, n: (b, 0 if rows is None else g))
  return pl.BlockSpec((None, None, size), lambda g, b, n: (b, n, 0 if rows is None else g))


# Where the dk/dv kernel writes dk and dv in each packed layout's gradient.
_SLOTS = {"qkv": (1, 2), "kv": (0, 1)}


def gradients(specs, arrays, o, lse, do, valid, *, packed: str | None, interpret):
  """The gradients of attention's output `o`: (dq, dk, dv) for separate operands; with
  `packed="qkv"` the fused qkv's gradient, with `packed="kv"` (dq, the packed kv's gradient).

  `arrays` are the forward's (q, k, v) operands (the packed array in each packed place) and
  `specs` their `operand_spec` makers. The dq kernel runs first and also writes delta =
  rowsum(dO * O) for the dk/dv kernel. `o` and `do` are [B, T, N, H]; `lse` [B, N, T] f32 is
  the forward's log-sum-exp of the scaled scores (base 2); `valid` [B, S] int32, or None,
  marks the keys that count.
  """
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plgpu
  interpret = interpreted(interpret)
  batch, q_len, heads, head_dim = o.shape
  kv_len = arrays[1].shape[1]
  dtype = o.dtype
  kw = dict(scale=math.log2(math.e) / math.sqrt(head_dim), sm_scale=1.0 / math.sqrt(head_dim))
  rows = operand_spec(q_len, head_dim)  # o and do
  q_spec, k_spec, v_spec = specs

  def run(kernel, name, grid_len, in_specs, operands, out_specs, out_shape, launch, aliases):
    if valid is None:  # the kernels take the validity ref first: bind None in its place
      kernel = functools.partial(without_valid, kernel)
      in_specs, operands = in_specs[1:], operands[1:]
    return pl.pallas_call(
        kernel, grid=(grid_len, batch, heads), in_specs=in_specs, out_specs=out_specs,
        out_shape=out_shape, interpret=interpret, input_output_aliases=aliases, name=name,
        compiler_params=plgpu.CompilerParams(num_warps=launch[0], num_stages=launch[1]),
    )(*operands)

  whole = pl.no_block_spec
  bq, bk, *launch = blocks(DQ_BLOCKS, q_len, kv_len)
  in_specs = [row_spec(kv_len, None, 1), q_spec(bq), k_spec(None), v_spec(None), rows(bq),
              rows(bq), row_spec(q_len, bq, 2)]
  fused = packed == "qkv"
  kernel = functools.partial(_dq_kernel, block_k=bk, fused=fused, **kw)
  delta = jax.ShapeDtypeStruct(lse.shape, jnp.float32)
  if fused:  # dq into slot 0 of the fused gradient; dk and dv follow in place
    dq = jax.ShapeDtypeStruct((batch, q_len, 3, heads, head_dim), dtype)
    dq_spec = whole
  else:
    dq, dq_spec = jax.ShapeDtypeStruct(o.shape, dtype), rows(bq)
  dq, delta = run(kernel, "muse_flash_attention_dq", q_len // bq, in_specs,
                  (valid, *arrays, o, do, lse), (dq_spec, row_spec(q_len, bq, 2)),
                  (dq, delta), launch, {})

  bq, bk, *launch = blocks(DKDV_BLOCKS, q_len, kv_len)
  in_specs = [row_spec(kv_len, bk, 1), q_spec(None), k_spec(bk), v_spec(bk), rows(None),
              row_spec(q_len, None, 2), row_spec(q_len, None, 2)]
  operands = (valid, *arrays, do, lse, delta)
  kernel = functools.partial(_dkdv_kernel, block_q=bq, slots=_SLOTS.get(packed), **kw)
  if packed == "kv":
    out = jax.ShapeDtypeStruct((batch, kv_len, 2, heads, head_dim), dtype)
    return dq, run(kernel, "muse_flash_attention_dkdv", kv_len // bk, in_specs, operands, whole,
                   out, launch, {})
  if fused:
    aliases = {len(operands) - (valid is None): 0}
    return run(kernel, "muse_flash_attention_dkdv", kv_len // bk, in_specs + [whole],
               operands + (dq,), whole, jax.ShapeDtypeStruct(dq.shape, dtype), launch, aliases)
  out = jax.ShapeDtypeStruct((batch, kv_len, heads, head_dim), dtype)
  kv_spec = operand_spec(kv_len, head_dim)(bk)
  dk, dv = run(kernel, "muse_flash_attention_dkdv", kv_len // bk, in_specs, operands,
               (kv_spec, kv_spec), (out, out), launch, {})
  return dq, dk, dv


def interpreted(interpret: bool | None) -> bool:
  """`interpret`, or when None whether the kernels must be interpreted: Triton needs an NVIDIA
  GPU, elsewhere (the CPU tests) they run interpreted."""
  return jax.default_backend() != "gpu" if interpret is None else interpret


def without_valid(kernel, *refs, **kw):
  """`kernel` with no key-validity ref (every key counts): its first argument is None."""
  return kernel(None, *refs, **kw)
