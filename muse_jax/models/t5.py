"""The T5 v1.1 encoder (Flax NNX), used frozen as Muse's text encoder.

Exactly the architecture of T5 v1.1 (and of transformers' `T5EncoderModel` with
`feed_forward_proj="gated-gelu"`):
- token embedding (not tied, not scaled) -> `num_layers` pre-norm blocks -> final RMSNorm;
- RMSNorm x * rsqrt(mean(x^2) + 1e-6) * scale in fp32, no mean subtraction, no biases anywhere;
- self-attention whose logits are NOT scaled by 1/sqrt(d_kv) (T5 folds that into the init),
  plus a relative position bias (bidirectional, 32 buckets, max distance 128) computed once
  per forward and added in every layer;
- gated-GELU FFN: gelu_tanh(x W_i0) * (x W_i1) W_o;
- no dropout (the encoder is frozen).

Precision: parameters in `param_dtype`, matmul inputs in `dtype` (bf16 or fp32), the residual
stream, norms, logits and softmax in fp32. The output is fp32; `TextEncoder` casts it.

Parameter tree (`functionalize(...)` keys; the loaders in `muse_jax.weights.t5_hf` and
`muse_jax.weights.t5x` produce exactly this tree):
  token_embedder/embedding                     [vocab, embed]
  relpos_bias/rel_embedding                    [heads, num_buckets]
  layers/{i}/pre_attention_layer_norm/scale    [embed]
  layers/{i}/attention/{query,key,value}/kernel [embed, heads, kv]
  layers/{i}/attention/out/kernel              [heads, kv, embed]
  layers/{i}/pre_mlp_layer_norm/scale          [embed]
  layers/{i}/mlp/{wi_0,wi_1}/kernel            [embed, mlp]
  layers/{i}/mlp/wo/kernel                     [mlp, embed]
  encoder_norm/scale                           [embed]

Padding: `__call__(ids, mask)` masks padded keys out of attention and returns exactly zero at
padded positions (mask == 0); see `muse_jax.encoders.text_encoder` for the full convention.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from muse_jax.models.layers import DenseGeneral, Precision, RMSNorm, param
from muse_jax.parallel.sharding import constrain


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Shape of a T5 v1.1 encoder. Defaults are T5 v1.1's (32128-entry embedding)."""
  d_model: int
  d_ff: int
  num_heads: int
  num_layers: int
  d_kv: int = 64
  vocab_size: int = 32128
  num_buckets: int = 32
  max_distance: int = 128
  eps: float = 1e-6

  def num_params(self) -> int:
    """Parameter count of the encoder (embedding included)."""
    inner = self.num_heads * self.d_kv
    per_layer = 4 * self.d_model * inner + 3 * self.d_model * self.d_ff + 2 * self.d_model
    return (self.vocab_size * self.d_model + self.num_heads * self.num_buckets
            + self.num_layers * per_layer + self.d_model)

  def flops_per_sequence(self, length: int) -> int:
    """Forward matmul FLOPs for one sequence of `length` tokens (2 per multiply-add)."""
    inner = self.num_heads * self.d_kv
    dense = 2 * length * (4 * self.d_model * inner + 3 * self.d_model * self.d_ff)
    attn = 2 * 2 * length * length * inner  # q.k logits and probs.v
    return self.num_layers * (dense + attn)


# Published T5 v1.1 sizes (muse_facts.md) plus tiny ones for tests and CPU benchmarks.
CONFIGS: dict[str, T5Config] = {
    "small": T5Config(d_model=512, d_ff=1024, num_heads=6, num_layers=8),
    "base": T5Config(d_model=768, d_ff=2048, num_heads=12, num_layers=12),
    "large": T5Config(d_model=1024, d_ff=2816, num_heads=16, num_layers=24),
    "xl": T5Config(d_model=2048, d_ff=5120, num_heads=32, num_layers=24),
    "xxl": T5Config(d_model=4096, d_ff=10240, num_heads=64, num_layers=24),
    # Tests: odd head count, d_model != heads * d_kv.
    "tiny": T5Config(d_model=32, d_ff=48, num_heads=3, num_layers=2, d_kv=8, vocab_size=256),
    # Shardable over tensor=2/4 (even head count); still small enough for CPU tests.
    "tiny_even": T5Config(d_model=32, d_ff=64, num_heads=4, num_layers=2, d_kv=8,
                          vocab_size=256),
}


def get_config(size: str) -> T5Config:
  if size not in CONFIGS:
    raise ValueError(f"unknown T5 size {size!r}; choose one of {sorted(CONFIGS)}")
  return CONFIGS[size]


def relative_position_bucket(relative_position: np.ndarray, *, num_buckets: int = 32,
                             max_distance: int = 128) -> np.ndarray:
  """Bidirectional T5 bucket of `relative_position` = key_pos - query_pos (numpy, int32).

  Half the buckets are for keys after the query (positive offsets). Within each half, offsets
  below `num_buckets // 4` get their own bucket; larger ones are log-spaced up to
  `max_distance`, and everything farther shares the last bucket. The log boundary is computed
  in float64 with a tiny tolerance so that exact powers (16, 32, 64 for the defaults) land in
  the mathematically correct bucket, as they do in Mesh TensorFlow / transformers.
  """
  rel = np.asarray(relative_position, dtype=np.int64)
  half = num_buckets // 2
  offset = np.where(rel > 0, half, 0)
  n = np.abs(rel)
  max_exact = half // 2
  with np.errstate(divide="ignore"):
    scaled = (np.log(np.maximum(n, 1) / max_exact) / math.log(max_distance / max_exact)
              * (half - max_exact))
  large = max_exact + np.floor(scaled + 1e-9).astype(np.int64)
  large = np.minimum(large, half - 1)
  return (offset + np.where(n < max_exact, n, large)).astype(np.int32)


@functools.lru_cache(maxsize=64)
def _bucket_table(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  pos = np.arange(length)
  return relative_position_bucket(pos[None, :] - pos[:, None], num_buckets=num_buckets,
                                  max_distance=max_distance)


def _normal(stddev: float):
  return jax.nn.initializers.normal(stddev)


class TokenEmbedder(nnx.Module):
  """Token embedding table [vocab, embed]; the lookup returns fp32 (no scaling in T5)."""

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs, precision: Precision):
    self.embedding = param(rngs, _normal(1.0), (cfg.vocab_size, cfg.d_model),
                           ("vocab", "embed"), precision.param_dtype)

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], ids, axis=0).astype(jnp.float32)


class RelativePositionBias(nnx.Module):
  """One learned scalar per (head, bucket); `__call__(L)` -> [1, heads, L, L] fp32 bias."""

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs, precision: Precision):
    self.num_buckets, self.max_distance = cfg.num_buckets, cfg.max_distance
    self.rel_embedding = param(
        rngs, jax.nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
        (cfg.num_heads, cfg.num_buckets), ("heads", None), precision.param_dtype)

  def __call__(self, length: int) -> jax.Array:
    buckets = _bucket_table(length, self.num_buckets, self.max_distance)
    table = self.rel_embedding[...].astype(jnp.float32)
    bias = jnp.take(table, jnp.asarray(buckets), axis=1)[None]
    return constrain(bias, (None, "act_heads", None, None))


class T5Attention(nnx.Module):
  """Unscaled multi-head self-attention with an additive position bias; no biases."""

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs, precision: Precision,
               implementation: str = "xla"):
    d, h, k = cfg.d_model, cfg.num_heads, cfg.d_kv
    self.implementation = implementation
    self.precision = precision
    kw = dict(rngs=rngs, precision=precision)
    # T5's init: query std (d*d_kv)^-1/2 (absorbs the missing 1/sqrt(d_kv)), key/value d^-1/2.
    self.query = DenseGeneral((d,), (h, k), in_axes=("embed",), out_axes=("heads", "kv"),
                              kernel_init=_normal((d * k) ** -0.5), **kw)
    self.key = DenseGeneral((d,), (h, k), in_axes=("embed",), out_axes=("heads", "kv"),
                            kernel_init=_normal(d ** -0.5), **kw)
    self.value = DenseGeneral((d,), (h, k), in_axes=("embed",), out_axes=("heads", "kv"),
                              kernel_init=_normal(d ** -0.5), **kw)
    self.out = DenseGeneral((h, k), (d,), in_axes=("heads", "kv"), out_axes=("embed",),
                            kernel_init=_normal((h * k) ** -0.5), **kw)

  def __call__(self, x, bias, mask):
    """x [B, L, D]; bias [1, H, L, L] fp32; mask [B, L] bool (True = real token)."""
    heads = ("act_batch", "act_length", "act_heads", None)
    q, k, v = (constrain(f(x), heads) for f in (self.query, self.key, self.value))
    if self.implementation == "xla":
      y = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask[:, None, None, :],
                                       scale=1.0, implementation="xla")
    else:  # fused kernels take key lengths (right padding) and a bias in the input dtype
      y = jax.nn.dot_product_attention(
          q, k, v, bias=bias.astype(q.dtype), scale=1.0,
          key_value_seq_lengths=jnp.sum(mask, axis=-1, dtype=jnp.int32),
          implementation=None if self.implementation == "auto" else self.implementation)
    return self.out(constrain(y, heads))


class T5GatedMLP(nnx.Module):
  """gelu_tanh(x W_i0) * (x W_i1), then W_o; hidden dim sharded as `mlp`."""

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs, precision: Precision):
    d, f = cfg.d_model, cfg.d_ff
    kw = dict(rngs=rngs, precision=precision)
    self.wi_0 = DenseGeneral((d,), (f,), in_axes=("embed",), out_axes=("mlp",),
                             kernel_init=_normal(d ** -0.5), **kw)
    self.wi_1 = DenseGeneral((d,), (f,), in_axes=("embed",), out_axes=("mlp",),
                             kernel_init=_normal(d ** -0.5), **kw)
    self.wo = DenseGeneral((f,), (d,), in_axes=("mlp",), out_axes=("embed",),
                           kernel_init=_normal(f ** -0.5), **kw)

  def __call__(self, x):
    h = jax.nn.gelu(self.wi_0(x), approximate=True) * self.wi_1(x)
    h = constrain(h, ("act_batch", "act_length", "act_mlp"))
    return self.wo(h)


class T5Block(nnx.Module):
  """Pre-norm residual block: x + Attn(Norm(x)), then x + MLP(Norm(x)); x stays fp32."""

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs, precision: Precision,
               implementation: str = "xla"):
    kw = dict(rngs=rngs, eps=cfg.eps, precision=precision)
    self.pre_attention_layer_norm = RMSNorm(cfg.d_model, **kw)
    self.attention = T5Attention(cfg, rngs=rngs, precision=precision,
                                 implementation=implementation)
    self.pre_mlp_layer_norm = RMSNorm(cfg.d_model, **kw)
    self.mlp = T5GatedMLP(cfg, rngs=rngs, precision=precision)

  def __call__(self, x, bias, mask):
    act = ("act_batch", "act_length", "act_embed")
    x = x + self.attention(self.pre_attention_layer_norm(x), bias, mask).astype(jnp.float32)
    x = constrain(x, act)
    x = x + self.mlp(self.pre_mlp_layer_norm(x)).astype(jnp.float32)
    return constrain(x, act)


class T5Encoder(nnx.Module):
  """T5 v1.1 encoder: ids [B, L] int, mask [B, L] -> hidden states [B, L, D] fp32.

  Padded positions (mask == 0) are excluded as attention keys and set to exactly zero in
  the output.
  """

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs, precision: Precision = Precision(),
               implementation: str = "xla"):
    self.cfg = cfg
    self.token_embedder = TokenEmbedder(cfg, rngs=rngs, precision=precision)
    self.relpos_bias = RelativePositionBias(cfg, rngs=rngs, precision=precision)
    self.layers = nnx.List([
        T5Block(cfg, rngs=rngs, precision=precision, implementation=implementation)
        for _ in range(cfg.num_layers)])
    # The final norm writes fp32 so an fp32 output keeps full precision under bf16 compute.
    self.encoder_norm = RMSNorm(cfg.d_model, rngs=rngs, eps=cfg.eps,
                                precision=Precision(jnp.float32, precision.param_dtype))

  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(bool)
    x = constrain(self.token_embedder(ids), ("act_batch", "act_length", "act_embed"))
    bias = self.relpos_bias(ids.shape[1])
    for layer in self.layers:
      x = layer(x, bias, mask)
    y = self.encoder_norm(x)
    return jnp.where(mask[..., None], y, 0.0)
