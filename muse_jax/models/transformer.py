"""The Muse base masked transformer (Muse Sec. 2.3), in Flax NNX.

tokens [B, T] (masked positions hold `mask_id` = codebook_size)
  -> token embedding + learned position embedding
  -> N pre-norm blocks: self-attention, cross-attention to the projected text, MLP
  -> final norm -> logits over the codebook [B, T, codebook_size] (fp32).

Text conditioning: T5 embeddings [B, S, text_dim] with valid lengths `text_len` [B], linearly
projected to the model width. `text_len == 0` is the null condition used for classifier-free
guidance: the context then holds one learned "null" vector at position 0 (length 1), so the
cross-attention always has a valid key and never produces NaNs.

Layers are stored stacked (leading `layers` axis); `scan_layers` chooses `lax.scan` (fast compiles
for deep models) or an unrolled loop over the same parameters, so checkpoints work with both.
Unrolled, a train step avoids the scan's stacked residual buffers and loop-carry copies: faster
at 16 layers (base_632m) and at 48 (base_3b) on one GPU; scanned, deep models compile faster
(python benchmarks/train_step.py --config=configs/base_3b.py
[--config.model.scan_layers=False]; docs/performance.md).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from muse_jax.models import layers as L
from muse_jax.models.fp8 import check_width as check_fp8_width
from muse_jax.parallel.sharding import constrain

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

ACT = ("act_batch", "act_length", "act_embed")


def fields_from_config(cls, cfg, section: str = "model") -> dict[str, Any]:
  """The dataclass fields of `cls` from a ConfigDict/dict section; unknown keys are errors.

  Lists become tuples (config.json has no tuples)."""
  if isinstance(cfg, cls):
    return dataclasses.asdict(cfg)
  d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
  names = {f.name for f in dataclasses.fields(cls)}
  extra = sorted(set(d) - names)
  if extra:
    raise ValueError(f"{section} config: unknown keys {extra}; valid keys are {sorted(names)}")
  return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """`config.model` of a base stage (muse_jax/configs/common.py documents each key)."""
  codebook_size: int
  grid_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  text_dim: int
  text_length: int
  dropout: float = 0.0
  attention: str = "xla"
  dtype: str = "bfloat16"
  param_dtype: str = "float32"
  remat: str = "none"
  scan_layers: bool = True
  fp8_matmuls: bool = False  # sampling only: muse_jax/models/fp8.py
  fp8_training: bool = False  # the blocks' projections in FP8: muse_jax/models/fp8_training.py
  text_pos_embed: bool = False  # a learned position embedding on the projected text

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any] | Any):
    """From the `model` section (ConfigDict or dict); unknown keys are errors."""
    return cls(**fields_from_config(cls, cfg))


def unstack_layers(state, num_layers: int) -> tuple:
  """The per-layer states of a stacked state (leading `layers` axis), by one split per array.

  Indexing `a[i]` per layer would do the same forward, but its gradient is a zero-padded copy
  of each layer's piece summed into the stacked gradient, which XLA evaluates as a sum over
  every layer for every element; the gradient of a split is one concatenation.
  """
  def split(a):
    return [p.reshape(p.shape[1:]) for p in jnp.split(a, num_layers, axis=0)]
  pieces = jax.tree.map(split, state)
  return tuple(jax.tree.map(lambda parts, i=i: parts[i], pieces,
                            is_leaf=lambda v: isinstance(v, list)) for i in range(num_layers))


def text_context(model, text, text_len):
  """Projected text [B, S, D] and its valid length [B] (>= 1), for a model with `text_proj`,
  `context_norm`, `null_context` and, if its config asks, `text_pos_embed` [text_length, D].

  Rows with text_len == 0 (the null condition) hold the null vector at position 0 and zeros
  elsewhere. The position embedding is added after the norm, to the text rows only.
  """
  ctx = model.context_norm(model.text_proj(text))
  if model.text_pos_embed is not None:
    ctx = ctx + model.text_pos_embed[...][:ctx.shape[1]].astype(ctx.dtype)[None]
  null = (text_len == 0)[:, None, None]
  pos0 = (jnp.arange(ctx.shape[1]) == 0)[None, :, None]
  ctx = jnp.where(null & pos0, model.null_context[...].astype(ctx.dtype), ctx)
  ctx = jnp.where(null & ~pos0, 0, ctx)
  return ctx, jnp.maximum(text_len, 1).astype(jnp.int32)


def text_pos_param(cfg, rngs, init, param_dtype):
  """The `text_pos_embed` parameter [text_length, D] if `cfg.text_pos_embed`, else None.

  The frozen T5 features carry word order only through their attention mixing; a random
  encoder's mixing is near-uniform, so captions that differ only in which colour goes with
  which shape give nearly the same set of features. A learned position per text slot lets the
  cross-attention bind neighbouring words (docs/demo.md).
  """
  if not cfg.text_pos_embed:
    return None
  return L.param(rngs, init, (int(cfg.text_length), int(cfg.hidden_size)), (None, "embed"),
                 param_dtype)


def _dropout(x, rate, key):
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class Block(nnx.Module):
  """Pre-norm transformer block: self-attn, optional cross-attn, MLP."""

  def __init__(self, cfg, *, rngs: nnx.Rngs, precision: L.Precision, cross: bool = True):
    d = cfg.hidden_size
    # fp8_training covers the blocks' projections only; the embeddings, text projection and
    # output head keep the compute dtype (as in FP8 recipes that keep the first and last layers).
    precision = dataclasses.replace(precision, fp8_training=bool(cfg.fp8_training))
    kw = dict(rngs=rngs, precision=precision)
    fp8 = bool(cfg.fp8_matmuls)  # sampling only: muse_jax/models/fp8.py
    if fp8:
      check_fp8_width(d)
    # With fp8, the norms feeding the e4m3 projections have their gains folded into the kernels.
    norm_kw = dict(kw, use_scale=not fp8)
    self.norm_self = L.RMSNorm(d, **norm_kw)
    self.self_attn = L.MultiHeadAttention(d, cfg.num_heads, cfg.head_dim,
                                          implementation=cfg.attention, fp8_query=fp8, **kw)
    if cross:
      self.norm_cross = L.RMSNorm(d, **norm_kw)
      self.cross_attn = L.MultiHeadAttention(d, cfg.num_heads, cfg.head_dim, kv_dim=d,
                                             implementation=cfg.attention, fp8_query=fp8, **kw)
    else:
      self.norm_cross = self.cross_attn = None
    self.norm_mlp = L.RMSNorm(d, **norm_kw)
    self.mlp = L.MLP(d, cfg.mlp_dim, fp8_input=fp8, **kw)
    self.dropout = float(cfg.dropout)
    self.fp8_training = precision.fp8_training

  def _bound(self, norm):
    """FP8 training: the scale of a norm's output from its bound, not from a pass over it."""
    return norm.bound() if self.fp8_training else None

  def __call__(self, x, context=None, context_len=None, dropout_key=None, cross_kv=None):
    keys = (jax.random.split(dropout_key, 3) if dropout_key is not None else (None,) * 3)
    h = self.self_attn(self.norm_self(x), x_bound=self._bound(self.norm_self))
    x = constrain(x + _dropout(h, self.dropout, keys[0]), ACT)
    if self.cross_attn is not None:
      h = self.cross_attn(self.norm_cross(x), context, kv_lengths=context_len, kv=cross_kv,
                          x_bound=self._bound(self.norm_cross))
      x = constrain(x + _dropout(h, self.dropout, keys[1]), ACT)
    h = self.mlp(self.norm_mlp(x), x_bound=self._bound(self.norm_mlp))
    x = x + _dropout(h, self.dropout, keys[2])
    return constrain(x, ACT)


class BlockStack(nnx.Module):
  """`num_layers` blocks with stacked parameters, run by scan or an unrolled loop."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, precision: L.Precision,
               cross: bool = True):
    self.num_layers = int(cfg.num_layers)
    self.scan = bool(cfg.scan_layers)
    if cfg.remat not in REMAT_POLICIES:
      raise ValueError(f"model.remat={cfg.remat!r}; choose one of {sorted(REMAT_POLICIES)}")
    self.remat = cfg.remat

    @nnx.split_rngs(splits=self.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(r):
      return Block(cfg, rngs=r, precision=precision, cross=cross)

    self.blocks = make(rngs)

  def cross_cache(self, context):
    """Every layer's cross-attention keys and values of `context` [B, S, D].

    The context is the same at every decoding step, so a sampler computes this once and passes
    it to `__call__(..., cache=)` instead of the context. Layout follows `scan_layers`: a
    (k, v) pair of [L, B, S, N, H] arrays when scanning, else a tuple of L per-layer pairs (no
    per-step slicing of a stacked array).
    """
    graphdef, state = nnx.split(self.blocks)

    def project(st):
      return nnx.merge(graphdef, st).cross_attn.project_kv(context)

    if self.scan:
      return jax.vmap(project)(state)
    return tuple(project(st) for st in unstack_layers(state, self.num_layers))

  def layer_params(self):
    """Each layer's parameters as arrays of their own (unrolled stacks; None when scanning).

    The unrolled loop slices layer i out of every stacked array. Inside a loop (a sampler's
    steps) XLA re-materialises those slices at every iteration: six weight copies per layer
    and step (python benchmarks/sample.py --rows=amused --profile DIR). A sampler slices them
    once, before its loop, and passes them back as `layers=`. (Slicing at load instead, with
    each layer's arrays as jit arguments, is slower: each array argument adds host time to
    every call; python benchmarks/dispatch.py; docs/experiments.md.)
    """
    if self.scan:
      return None
    _, state = nnx.split(self.blocks)
    return unstack_layers(state, self.num_layers)

  def __call__(self, x, context=None, context_len=None, dropout_key=None, cache=None,
               layers=None):
    """Runs the blocks; `cache` (from `cross_cache`) replaces `context` when given, and
    `layers` (from `layer_params`) the stacked parameters."""
    graphdef, state = nnx.split(self.blocks)
    keys = (jax.random.split(dropout_key, self.num_layers) if dropout_key is not None
            else None)

    def layer(x, st, key, kv):
      return nnx.merge(graphdef, st)(x, context, context_len, key, kv)

    if self.remat != "none":
      layer = jax.checkpoint(layer, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan)

    if self.scan:
      def body(x, xs):
        st, key, kv = xs
        return layer(x, st, key, kv), None
      x, _ = jax.lax.scan(body, x, (state, keys, cache))
      return x
    if layers is not None and len(layers) != self.num_layers:
      raise ValueError(f"layers holds {len(layers)} layers; the stack has {self.num_layers}")
    if layers is None:
      layers = unstack_layers(state, self.num_layers)
    for i in range(self.num_layers):
      x = layer(x, layers[i], None if keys is None else keys[i],
                None if cache is None else cache[i])
    return x


class MaskedTransformer(nnx.Module):
  """Muse base model: text-conditioned masked token prediction over a VQ codebook."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    p = L.Precision.from_names(cfg.dtype, cfg.param_dtype)
    self.precision = p
    d = cfg.hidden_size
    self.mask_id = int(cfg.codebook_size)
    self.seq_len = int(cfg.grid_size) ** 2
    emb_init = jax.nn.initializers.normal(0.02)
    # codebook + mask token, rounded up to a multiple of 128 rows so the table shards evenly
    rows = -(-(cfg.codebook_size + 1) // 128) * 128
    self.token_embed = L.param(rngs, emb_init, (rows, d), ("vocab", "embed"), p.param_dtype)
    self.pos_embed = L.param(rngs, emb_init, (self.seq_len, d), (None, "embed"), p.param_dtype)
    self.text_proj = L.DenseGeneral((cfg.text_dim,), (d,), in_axes=(None,), out_axes=("embed",),
                                    use_bias=True, rngs=rngs, precision=p)
    self.context_norm = L.RMSNorm(d, rngs=rngs, precision=p)
    self.null_context = L.param(rngs, emb_init, (d,), ("embed",), p.param_dtype)
    self.text_pos_embed = text_pos_param(cfg, rngs, emb_init, p.param_dtype)
    self.stack = BlockStack(cfg, rngs=rngs, precision=p)
    self.final_norm = L.RMSNorm(d, rngs=rngs, precision=p)
    self.head = L.DenseGeneral((d,), (cfg.codebook_size,), in_axes=("embed",),
                               out_axes=("vocab",), use_bias=True, rngs=rngs, precision=p)

  def embed_context(self, text, text_len):
    """Project text to model width; rows with text_len == 0 become the null context."""
    ctx, ctx_len = text_context(self, text, text_len)
    return constrain(ctx, ACT), ctx_len

  def encode_context(self, text, text_len):
    """(context [B, S, D], valid length [B]) that the token decoder attends to.

    Constant over the decoding steps of one image, so a sampler computes it once
    (same interface as `SuperResTransformer.encode_context`, without the low-res tokens).
    """
    return self.embed_context(text, text_len)

  def decode(self, tokens, context, context_len, *, dropout_key=None, cache=None,
             layers=None):
    """tokens [B, T] int32 (masked = mask_id) + encoded context -> logits [B, T, V] (fp32).

    `cache=self.stack.cross_cache(context)` (computed once per image) may replace `context`;
    `layers=self.stack.layer_params()` (sliced once) the stacked block parameters.
    """
    if tokens.shape[1] != self.seq_len:
      raise ValueError(f"expected {self.seq_len} tokens per image, got {tokens.shape[1]}")
    dtype = self.precision.dtype
    x = jnp.take(self.token_embed[...], tokens, axis=0).astype(dtype)
    x = x + self.pos_embed[...].astype(dtype)[None]
    x = constrain(x, ACT)
    x = self.stack(x, context, context_len, dropout_key, cache, layers)
    logits = self.head(self.final_norm(x)).astype(jnp.float32)
    return constrain(logits, ("act_batch", "act_length", "act_vocab"))

  def __call__(self, tokens, text, text_len, *, dropout_key=None):
    """tokens [B, T] int32, text [B, S, text_dim], text_len [B] int32 -> logits [B, T, V]."""
    context, context_len = self.encode_context(text, text_len)
    return self.decode(tokens, context, context_len, dropout_key=dropout_key)
