"""One transformer stage of the sampler as one traceable function (`sample_stage`), its jitted
instances shared by pipelines (`stage_fn`), and the XLA options samplers compile with.

`sample_stage` computes the text context (and, for SR, the low-res encoder) once, outside the
decoding loop, for the conditional and unconditional rows; the loop (`parallel_decode.decode`,
or `editing.mask_free_edit`) runs one 2B forward per step on the cached context. The
parameters are arguments, never constants. pipeline.py batches it, per_image.py and sharded.py
vmap it over rows.
"""
from __future__ import annotations

import functools

import jax

from muse_jax.sampling import editing, parallel_decode

# XLA options for the sampler's jit on GPUs (each one's effect: python benchmarks/sample.py
# --rows=amused --profile DIR on an H200, against a run with that option overridden by
# --xla_option NAME=VALUE; docs/performance.md, docs/experiments.md):
# - cuBLAS gemms. The matmuls are small (2B x 256 rows at batch B under CFG): XLA's own Triton
#   gemms split them over K and add the partial sums in separate kernels, while cuBLAS fuses
#   bias, GELU and residual adds into its epilogues, so there are fewer kernels and a faster
#   call.
# - CUDA graphs (command buffers) for every kernel type, the step loop's WHILE included, from
#   the first kernel on: thousands of microsecond-long kernels per image otherwise leave the GPU
#   waiting on kernel launches. The tokens are identical with and without them. Needs a
#   driver with CUDA graph conditional nodes (CUDA >= 12.3); drop the two command-buffer
#   entries for older ones.
GPU_SAMPLER_OPTIONS = {
    "xla_gpu_enable_triton_gemm": False,
    "xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL",
    "xla_gpu_graph_min_graph_size": 1,
}


def sampler_compiler_options() -> dict:
  """`jax.jit(..., compiler_options=)` for sampling functions on the default backend."""
  return dict(GPU_SAMPLER_OPTIONS) if jax.default_backend() == "gpu" else {}


# Jitted stage functions, shared by pipelines that hold the same model definition (the value
# keeps the model definition alive, so its id is never reused while cached).
_STAGE_FNS: dict = {}


def stage_fn(model_def, stage: str, mode: str, opts: dict, mask_id: int):
  cache_key = (id(model_def), stage, mode, tuple(sorted(opts.items())), mask_id)
  if cache_key not in _STAGE_FNS:
    fn = jax.jit(functools.partial(sample_stage, model_def, stage, mode, opts, mask_id),
                 compiler_options=sampler_compiler_options())
    _STAGE_FNS[cache_key] = (model_def, fn)
  return _STAGE_FNS[cache_key][1]


def sample_stage(model_def, stage, mode, opts, mask_id, params, tokens, mask, text, text_len,
                 utext, ulen, key, tokens_lo):
  """One transformer stage, traceable (jit it): the context once, then the decoding loop.

  Args:
    model_def: the stage's FunctionalModel; params: its parameters.
    stage: 'base' or 'sr'; mode: 'decode' (mask = regenerate) or 'maskfree' (mask = editable).
    opts: static `parallel_decode.decode` / `editing.mask_free_edit` options.
    mask_id: the mask token id.
    tokens, mask: int32 / bool [B, T].
    text, text_len, utext, ulen: conditional and unconditional text ([B, S, D], [B]).
    key: PRNG key.
    tokens_lo: int32 [B, T_lo] low-res tokens (sr only; None for base).
  Returns:
    int32 [B, T].
  """
  model = model_def.bind(params)
  if stage == "base":
    ctx = model.encode_context(text, text_len)
    uctx = model.encode_context(utext, ulen)
  else:
    ctx = model.encode_context(tokens_lo, text, text_len)
    uctx = model.encode_context(tokens_lo, utext, ulen)

  # The cross-attention keys/values of the context are computed once, not at every step, and
  # (unrolled stacks) each layer's weights are sliced out of the stacked arrays once. The
  # context itself goes along for an SR model's low-res skip (unused otherwise: XLA drops it).
  def prepare(c):
    return model.stack.cross_cache(c[0]), c[1], c[0]

  layers = model.stack.layer_params()

  def logits_fn(t, c):
    return model.decode(t, c[2], c[1], cache=c[0], layers=layers)

  if mode == "decode":
    return parallel_decode.decode(logits_fn, tokens, ctx, uctx, key, mask_id=mask_id,
                                  known_mask=~mask, prepare_cond=prepare, **opts)
  if mode == "maskfree":
    return editing.mask_free_edit(logits_fn, tokens, ctx, uctx, key, mask_id=mask_id,
                                  editable_mask=mask, prepare_cond=prepare, **opts)
  raise ValueError(f"mode={mode!r}; use 'decode' or 'maskfree'")
