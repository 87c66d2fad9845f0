"""FP8 matmuls for training (`model.fp8_training`): the transformer blocks' projections.

`dot(x, w)` computes x [M, K] @ w [K, N] with both operands quantized per tensor to e4m3
(3 mantissa bits, range +-448), and its backward quantizes the incoming gradient to e5m2 (2
mantissa bits, range +-57344) for both gradient matmuls: the "hybrid" recipe of NVIDIA's
Transformer Engine. Scales are current, not delayed: each tensor's scale is its own max |value|
mapped to the format's largest value, taken in the step that uses it, so there is no amax
history to keep in the train state or checkpoint and a step's scales can't lag a jump in
activations. The matmuls take the FP8 arrays as operands (cuBLASLt FP8 kernels on GPUs, fp32
accumulation) and multiply the result by the two scales.

The forward saves the e4m3 operands for the backward, not the bf16 ones. Everything outside
these matmuls (norms, attention, GELU, residual stream, the text projection, embeddings and the
output head) keeps its precision. The error against float64 is bounded in
tests/models/test_fp8_training.py; speed: docs/performance.md#fp8-training.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

E4M3, E4M3_MAX = jnp.float8_e4m3fn, 448.0
E5M2, E5M2_MAX = jnp.float8_e5m2, 57344.0


def quantize(a: jax.Array, fmt, fmt_max: float, amax=None):
  """(a / scale as `fmt`, fp32 scale), scale = max|a| / fmt_max (1 for an all-zero `a`), or
  `amax` / fmt_max when a bound `amax` >= max|a| is given.

  Clipped before the cast: a value just over fmt_max after the division would become NaN
  (e4m3fn has no infinity)."""
  amax = jnp.max(jnp.abs(a)) if amax is None else amax
  amax = amax.astype(jnp.float32)
  scale = jnp.where(amax > 0, amax / fmt_max, 1.0)
  q = jnp.clip(a.astype(jnp.float32) / scale, -fmt_max, fmt_max).astype(fmt)
  return q, scale


def _mm(a, b, contract, out_dtype):
  """dot_general of two quantized operands (no batch dims) on their FP8 values, times both
  scales. The dot reads the FP8 arrays themselves: written as convert-to-bf16 (dequantize)
  then dot, XLA may drop the convert pair as excess precision and run a bf16 matmul."""
  (qa, sa), (qb, sb) = a, b
  y = jax.lax.dot_general(qa, qb, (contract, ((), ())), preferred_element_type=out_dtype)
  return y * (sa * sb).astype(out_dtype)


def _dims(first: int, n: int) -> tuple[int, ...]:
  return tuple(range(first, first + n))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dot(x: jax.Array, w: jax.Array, n_in: int = 1, x_bound=None) -> jax.Array:
  """x [M, *in] (the compute dtype) @ w [*in, *out] (any float) -> [M, *out] in x's dtype,
  contracting the `n_in` dims `in`, in FP8.

  `x_bound`: a bound on max|x| known without reading x (an RMSNorm's output: see
  `RMSNorm.bound`); x's scale then comes from it, which saves a pass over x."""
  return _forward(x, w, n_in, x_bound)[0]


def _forward(x, w, n_in, x_bound):
  xq, wq = quantize(x, E4M3, E4M3_MAX, amax=x_bound), quantize(w, E4M3, E4M3_MAX)
  y = _mm(xq, wq, (_dims(1, n_in), _dims(0, n_in)), x.dtype)
  # (residuals are arrays only: an empty array carries w's dtype)
  return y, (xq, wq, jnp.zeros((0,), w.dtype))


def _backward(n_in, res, g):
  xq, wq, w_like = res
  n_out = g.ndim - 1
  gq = quantize(g, E5M2, E5M2_MAX)
  # dx [M, *in]: g [M, *out] . w [*in, *out] over out;  dw [*in, *out]: x . g over M
  dx = _mm(gq, wq, (_dims(1, n_out), _dims(n_in, n_out)), g.dtype)
  # (in the compute dtype, then w's: XLA's CPU dots have no bf16 x bf16 -> f32)
  dw = _mm(xq, gq, ((0,), (0,)), g.dtype).astype(w_like.dtype)
  return dx, dw, None


dot.defvjp(_forward, _backward)
