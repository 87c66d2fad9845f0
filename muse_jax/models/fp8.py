"""FP8 (e4m3) matmuls for sampling: the projections that read an RMSNorm's output.

Which: in every transformer block, the self-attention's fused q/k/v projection, the
cross-attention's query projection and the MLP's input projection (`model.fp8_matmuls`). Each
reads the output of an RMSNorm, and that is what makes a static activation scale safe:

  RMSNorm(x) = g * x / rms(x), and |x_i / rms(x)| <= sqrt(D) for every row x of width D.

`quantize_params` folds each norm's scale g into the rows of the kernel it feeds
(diag(g) @ W: the same product) and drops g: built with `fp8_matmuls`, those norms have no
scale (nothing to multiply, nor to slice per layer in a sampler). The norm emits x / rms(x),
which fits e4m3's range (+-448) for any D <= 200704 and needs no scaling; the kernel is stored
as e4m3 with one scale per matrix (its max |value| maps to 448), transposed to [N, K],
cuBLAS's layout for FP8 operands. The matmul runs e4m3 x e4m3 with fp32 accumulation and
writes the compute dtype, times the kernel's scale. Everything else (the other matmuls,
attention, norms, the residual stream) keeps its precision.

This is an inference transform, not a training mode: `quantize_params` maps a trained model's
parameters to those of the same config with `fp8_matmuls=True`. Quantization changes the
numbers (e4m3 keeps 3 mantissa bits): tests/models/test_fp8.py bounds the error. Its effect on
speed: `python benchmarks/sample.py --rows=amused --fp8`; on samples: `python
benchmarks/sample_quality.py --config=configs/demo_cpu.py --workdir=demo_out --out=DIR --fp8`
(figures in docs/performance.md).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

E4M3 = jnp.float8_e4m3fn
E4M3_MAX = 448.0
# (norm, module, projection) inside a block: the norm feeds module.projection, run in FP8.
FOLDED = (("norm_self", "self_attn", "qkv"), ("norm_cross", "cross_attn", "q"),
          ("norm_mlp", "mlp", "wi"))


def check_width(dim: int) -> None:
  """x / rms(x) is bounded by sqrt(dim); e4m3 needs that <= 448."""
  if math.sqrt(dim) > E4M3_MAX:
    raise ValueError(f"fp8_matmuls: hidden size {dim} > {int(E4M3_MAX ** 2)}: a normalised "
                     "activation could exceed e4m3's range")


def matmul(x2: jax.Array, kernel: jax.Array, scale: jax.Array, out_dtype) -> jax.Array:
  """x2 [M, K] (any float) @ dequant(kernel [N, K] e4m3, scale) -> [M, N] in `out_dtype`.

  x2 is cast to e4m3 as it is (clipped to +-448, which RMSNorm outputs never reach).
  """
  x8 = jnp.clip(x2, -E4M3_MAX, E4M3_MAX).astype(E4M3)
  y = jax.lax.dot_general(x8, kernel, (((1,), (1,)), ((), ())), preferred_element_type=out_dtype)
  return y * scale.astype(out_dtype)


def quantize_kernel(w: jax.Array):
  """A [K, N...] kernel -> (e4m3 [prod(N...), K], fp32 scale)."""
  w2 = w.reshape(w.shape[0], -1).astype(jnp.float32).T
  amax = jnp.max(jnp.abs(w2))
  scale = jnp.where(amax > 0, amax / E4M3_MAX, 1.0).astype(jnp.float32)
  return (w2 / scale).astype(E4M3), scale


def _fold_and_quantize(norm_scale, kernel):
  """One layer: (e4m3 kernel [N, K], scale) of diag(norm_scale) @ kernel."""
  folded = kernel.astype(jnp.float32) * norm_scale.astype(jnp.float32).reshape(
      (-1,) + (1,) * (kernel.ndim - 1))
  return quantize_kernel(folded)


def quantize_params(params: dict) -> dict:
  """A model's params (stacked blocks: `stack`, an SR model's `lowres_stack`) -> the params of
  the same config with `fp8_matmuls=True`. Returns a new tree; `params` is unchanged."""
  out = jax.tree.map(lambda a: a, params)
  found = False
  for sub in out.values():
    if not (isinstance(sub, dict) and "blocks" in sub):
      continue
    blocks = sub["blocks"]
    for norm_name, module, proj_name in FOLDED:
      if module not in blocks:
        continue  # e.g. the SR low-res encoder has no cross-attention
      proj = blocks[module][proj_name]
      w8, s = jax.vmap(_fold_and_quantize)(blocks.pop(norm_name)["scale"], proj["kernel"])
      proj["kernel"], proj["kernel_scale"] = w8, s
      found = True
  if not found:
    raise ValueError("quantize_params: no transformer block stack (`stack/blocks`) in params")
  return out
