"""Frozen T5 v1.1 text encoder settings shared by precompute and sampling configs.

Use inside a config: `config.text_encoder = common_t5.text_encoder_config("xxl")`, then
`TextEncoder.from_config(config.text_encoder, mesh=mesh, rules=config.mesh.rules)`.
"""
from __future__ import annotations

import ml_collections

SIZES = ("tiny", "tiny_even", "small", "base", "large", "xl", "xxl")


def text_encoder_config(size: str = "xxl") -> ml_collections.ConfigDict:
  """ConfigDict for `muse_jax.encoders.text_encoder.TextEncoder`.

  Keys:
    size: T5 v1.1 size (`muse_jax.models.t5.CONFIGS`); Muse uses xxl (4096-d outputs).
    max_length: tokens per caption incl. EOS (Muse's value is unpublished; 128 is common).
    dtype: compute dtype of the matmuls ('bfloat16' or 'float32'; never 'float16', which
      overflows in T5-XXL). Norms, logits, softmax and the residual stream are fp32.
    param_dtype: dtype the frozen weights are stored in on device ('bfloat16' halves memory
      and all-gather traffic and changes nothing for bf16 matmuls).
    output_dtype: dtype of the returned embeddings.
    weights_format: 'random' (benchmarks/tests), 'hf' (safetensors) or 't5x' (checkpoint dir).
    weights_path: safetensors file/dir/index json ('hf') or T5X checkpoint dir ('t5x').
    spiece_model: T5's sentencepiece `spiece.model` (needed to encode strings).
    attention: 'xla' (any backend) or 'cudnn' (fused kernel on NVIDIA GPUs).
    seed: init seed for weights_format='random'.
    tokenizer_threads: sentencepiece threads per batch (0 = its default).
  """
  if size not in SIZES:
    raise ValueError(f"text_encoder size {size!r} is not one of {SIZES}")
  return ml_collections.ConfigDict(dict(
      size=size,
      max_length=128,
      dtype="bfloat16",
      param_dtype="bfloat16",
      output_dtype="bfloat16",
      weights_format="random",
      weights_path="",
      spiece_model="",
      attention="xla",
      seed=0,
      tokenizer_threads=0,
  ))
