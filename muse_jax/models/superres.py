"""The Muse super-resolution masked transformer (Muse Sec. 2.4, Fig. 4), in Flax NNX.

tokens_lo [B, T_lo] (low-res tokens, e.g. 16x16, never masked)
  -> low-res token embedding + learned position embedding
  -> `lowres_num_layers` self-attention blocks (the low-res encoder) -> RMSNorm
text [B, S, text_dim] -> linear projection -> RMSNorm (as in the base model)
context = concat([encoded low-res tokens, projected text])           [B, T_lo + S, D]
tokens [B, T_hi] (high-res tokens, e.g. 64x64; masked positions hold `mask_id`)
  -> token embedding + learned position embedding
  -> `num_layers` blocks: self-attention, cross-attention to `context`, MLP
  -> final norm -> logits over the codebook [B, T_hi, codebook_size] (fp32).

Context layout and lengths: the low-res part comes first because it is always fully valid,
so the valid keys are a prefix of length `T_lo + text_len` (what `key_value_seq_lengths` and
cuDNN flash attention accept; T_lo=256 plus S=128 keeps the KV length a multiple of 64).

Null condition (classifier-free guidance): `text_len == 0`. Muse's SR stage drops only the
text, never the low-res tokens, so the unconditional model still sees all T_lo encoded
low-res tokens; the text slot then holds one learned "null" vector at position T_lo (valid
length T_lo + 1), exactly like the base model's null condition at position 0. That keeps the
sampler's CFG convention identical for both stages (pass text_len=0).

Optional low-res skip (`model.lowres_skip`, default False = the paper's model): the high-res
input at grid cell (i, j) also adds the encoded low-res token of the cell that covers it,
(i // f, j // f) with f = grid_size / lowres_grid_size, read from the context's first T_lo
rows. The decoder then starts from the low-res content at every position instead of having
to learn where to cross-attend; no parameters are added, so checkpoints are the same shape
either way (but not interchangeable: it is a different function). Small, briefly trained
SR models need it: the CPU demo's SR stage places and colours shapes better with it (its
effect on the detector's scores is in docs/demo.md).

The encoder and the decoder are `transformer.BlockStack`s of the same width, heads and MLP
(so their outputs concatenate without a projection); only their depths differ. Both honour
`scan_layers`, `remat` and `dropout`. The high-res part uses the base model's parameter names
(`token_embed`, `pos_embed`, `text_proj`, `context_norm`, `null_context`, `stack`,
`final_norm`, `head`); the low-res part adds `lowres_embed`, `lowres_pos_embed`,
`lowres_stack` and `lowres_norm`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from muse_jax.models import layers as L
from muse_jax.models.transformer import (ACT, BlockStack, TransformerConfig, text_context,
                                         text_pos_param)
from muse_jax.parallel.sharding import constrain

@dataclasses.dataclass(frozen=True, kw_only=True)
class SuperResConfig(TransformerConfig):
  """`config.model` of an sr stage (muse_jax/configs/common_sr.py): the base model's keys plus
  the low-res grid and encoder."""
  lowres_grid_size: int
  lowres_num_layers: int
  lowres_skip: bool = False


def lowres_encoder_config(cfg: SuperResConfig) -> TransformerConfig:
  """The `BlockStack` settings of the low-res encoder: the model's, with its own depth."""
  base = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TransformerConfig)}
  return TransformerConfig(**{**base, "num_layers": int(cfg.lowres_num_layers)})


class SuperResTransformer(nnx.Module):
  """Muse SR model: high-res masked token prediction given low-res tokens and text.

  `cfg` is the typed `model` section of an `sr` config (muse_jax/configs/common_sr.py): the base
  model's keys plus `lowres_grid_size` and `lowres_num_layers`. Both token grids use
  `codebook_size` codes.
  """

  def __init__(self, cfg: SuperResConfig, *, rngs: nnx.Rngs):
    p = L.Precision.from_names(cfg.dtype, cfg.param_dtype)
    self.precision = p
    d = int(cfg.hidden_size)
    self.mask_id = int(cfg.codebook_size)
    self.seq_len = int(cfg.grid_size) ** 2
    self.lowres_len = int(cfg.lowres_grid_size) ** 2
    self.lowres_skip = bool(cfg.lowres_skip)
    if self.lowres_skip and int(cfg.grid_size) % int(cfg.lowres_grid_size):
      raise ValueError(f"model.lowres_skip needs grid_size ({cfg.grid_size}) to be a multiple of "
                       f"lowres_grid_size ({cfg.lowres_grid_size})")
    emb_init = jax.nn.initializers.normal(0.02)
    kw = dict(rngs=rngs, precision=p)
    # Low-res encoder. Low-res tokens are never masked: no mask row in their table.
    self.lowres_embed = L.param(rngs, emb_init, (cfg.codebook_size, d), ("vocab", "embed"),
                                p.param_dtype)
    self.lowres_pos_embed = L.param(rngs, emb_init, (self.lowres_len, d), (None, "embed"),
                                    p.param_dtype)
    self.lowres_stack = BlockStack(lowres_encoder_config(cfg), cross=False, **kw)
    self.lowres_norm = L.RMSNorm(d, **kw)
    # Text conditioning (as in the base model).
    self.text_proj = L.DenseGeneral((cfg.text_dim,), (d,), in_axes=(None,), out_axes=("embed",),
                                    use_bias=True, **kw)
    self.context_norm = L.RMSNorm(d, **kw)
    self.null_context = L.param(rngs, emb_init, (d,), ("embed",), p.param_dtype)
    self.text_pos_embed = text_pos_param(cfg, rngs, emb_init, p.param_dtype)
    # High-res masked decoder.
    self.token_embed = L.param(rngs, emb_init, (cfg.codebook_size + 1, d), ("vocab", "embed"),
                               p.param_dtype)
    self.pos_embed = L.param(rngs, emb_init, (self.seq_len, d), (None, "embed"), p.param_dtype)
    self.stack = BlockStack(cfg, cross=True, **kw)
    self.final_norm = L.RMSNorm(d, **kw)
    self.head = L.DenseGeneral((d,), (cfg.codebook_size,), in_axes=("embed",),
                               out_axes=("vocab",), use_bias=True, **kw)

  def embed_text(self, text, text_len):
    """Projected text [B, S, D]; rows with text_len == 0 hold the null vector at position 0."""
    return text_context(self, text, text_len)

  def encode_lowres(self, tokens_lo, *, dropout_key=None):
    """Low-res tokens [B, T_lo] int32 -> encoded [B, T_lo, D] (compute dtype)."""
    if tokens_lo.shape[1] != self.lowres_len:
      raise ValueError(f"expected {self.lowres_len} low-res tokens per image, "
                       f"got {tokens_lo.shape[1]}")
    dtype = self.precision.dtype
    x = jnp.take(self.lowres_embed[...], tokens_lo, axis=0).astype(dtype)
    x = constrain(x + self.lowres_pos_embed[...].astype(dtype)[None], ACT)
    x = self.lowres_stack(x, dropout_key=dropout_key)
    return constrain(self.lowres_norm(x), ACT)

  def encode_context(self, tokens_lo, text, text_len, *, dropout_key=None):
    """(context [B, T_lo + S, D], valid length [B]) that the high-res decoder attends to.

    Constant over the decoding steps of one image, so a sampler computes it once.
    """
    lowres = self.encode_lowres(tokens_lo, dropout_key=dropout_key)
    txt, txt_len = self.embed_text(text, text_len)
    context = jnp.concatenate([lowres, txt.astype(lowres.dtype)], axis=1)
    return constrain(context, ACT), (self.lowres_len + txt_len).astype(jnp.int32)

  def decode(self, tokens, context, context_len, *, dropout_key=None, cache=None,
             layers=None):
    """High-res tokens [B, T_hi] (masked = mask_id) -> logits [B, T_hi, V] (fp32).

    `cache=self.stack.cross_cache(context)` (computed once per image) may replace `context`
    in the cross-attention; with `lowres_skip` the context is still needed (its low-res rows).
    `layers=self.stack.layer_params()` (sliced once) may replace the stacked block parameters.
    """
    if tokens.shape[1] != self.seq_len:
      raise ValueError(f"expected {self.seq_len} high-res tokens per image, "
                       f"got {tokens.shape[1]}")
    dtype = self.precision.dtype
    x = jnp.take(self.token_embed[...], tokens, axis=0).astype(dtype)
    x = x + self.pos_embed[...].astype(dtype)[None]
    if self.lowres_skip:
      if context is None:
        raise ValueError("model.lowres_skip reads the context's low-res rows: pass the context "
                         "to decode (also with cache=)")
      x = x + upsample_grid(context[:, :self.lowres_len], self.seq_len).astype(dtype)
    x = constrain(x, ACT)
    x = self.stack(x, context, context_len, dropout_key, cache, layers)
    logits = self.head(self.final_norm(x)).astype(jnp.float32)
    return constrain(logits, ("act_batch", "act_length", "act_vocab"))

  def __call__(self, tokens, tokens_lo, text, text_len, *, dropout_key=None):
    """tokens [B, T_hi], tokens_lo [B, T_lo] int32, text [B, S, text_dim], text_len [B]
    -> logits [B, T_hi, codebook_size] (fp32)."""
    k_enc = k_dec = None
    if dropout_key is not None:
      k_enc, k_dec = jax.random.split(dropout_key)
    context, context_len = self.encode_context(tokens_lo, text, text_len, dropout_key=k_enc)
    return self.decode(tokens, context, context_len, dropout_key=k_dec)


def upsample_grid(x: jax.Array, length: int) -> jax.Array:
  """[B, g*g, D] row-major grid values -> [B, length, D] on the n x n grid (n*n = length, n a
  multiple of g): cell (i, j) takes the value of cell (i // f, j // f), f = n / g."""
  b, t, d = x.shape
  g, n = int(round(t ** 0.5)), int(round(length ** 0.5))
  if g * g != t or n * n != length or n % g:
    raise ValueError(f"cannot upsample a {t}-cell grid to {length} cells")
  f = n // g
  x = x.reshape(b, g, 1, g, 1, d)
  return jnp.broadcast_to(x, (b, g, f, g, f, d)).reshape(b, length, d)
