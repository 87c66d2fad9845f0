"""Analytic model FLOPs for MFU: every matmul counted at 2*m*n*k, training = 3x forward.

Embedding lookups are not matmuls and are not counted; rematerialised recomputation is not
counted either (MFU counts the model's FLOPs, not the hardware's).
"""
from __future__ import annotations


def attention_products_flops(cfg, q_len: int, kv_len: int) -> float:
  """QK^T and PV of one attention of `q_len` queries over `kv_len` keys (the part that flash
  attention kernels compute; the projections around it are ordinary matmuls)."""
  return float(2 * 2 * q_len * kv_len * cfg.num_heads * cfg.head_dim)


def block_forward_flops(cfg, q_len: int, kv_len: int | None,
                        attention_only: bool = False) -> float:
  """One pre-norm block on `q_len` tokens, cross-attending to `kv_len` context tokens.
  `attention_only`: just its attentions' score and value products."""
  attn = attention_products_flops(cfg, q_len, q_len)
  if kv_len is not None:
    attn += attention_products_flops(cfg, q_len, kv_len)
  if attention_only:
    return attn
  d, f = cfg.hidden_size, cfg.mlp_dim
  hd = cfg.num_heads * cfg.head_dim
  flops = 2 * q_len * d * 3 * hd            # fused qkv
  flops += 2 * q_len * hd * d               # out projection
  if kv_len is not None:
    flops += 2 * q_len * d * hd + 2 * kv_len * d * 2 * hd  # q, kv projections
    flops += 2 * q_len * hd * d
  flops += 2 * 2 * q_len * d * f            # MLP
  return float(flops) + attn


def base_transformer_train_flops(cfg, attention_only: bool = False) -> float:
  """Forward+backward FLOPs of one example of the base model (`config.model`); with
  `attention_only`, those of its attentions' score and value products alone."""
  t, s = cfg.grid_size ** 2, cfg.text_length
  fwd = cfg.num_layers * block_forward_flops(cfg, t, s, attention_only)
  if not attention_only:
    fwd += 2 * s * cfg.text_dim * cfg.hidden_size      # text projection
    fwd += 2 * t * cfg.hidden_size * cfg.codebook_size  # logits
  return 3.0 * fwd


# Dense bf16 peak TFLOP/s per chip, by `device_kind` substring (datasheet values).
PEAK_TFLOPS = (
    ("B200", 2250.0), ("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L4", 121.0),
    ("TPU v6", 918.0), ("TPU v5p", 459.0), ("TPU v5 lite", 197.0), ("TPU v5e", 197.0),
    ("TPU v5", 459.0), ("TPU v4", 275.0), ("TPU v3", 123.0),
)


def peak_flops_per_device(device, override_tflops: float = 0.0) -> float:
  """Peak FLOP/s of one device; 0 when unknown (MFU is then not reported)."""
  if override_tflops > 0:
    return override_tflops * 1e12
  kind = getattr(device, "device_kind", "")
  for name, tflops in PEAK_TFLOPS:
    if name.lower() in kind.lower():
      return tflops * 1e12
  return 0.0
