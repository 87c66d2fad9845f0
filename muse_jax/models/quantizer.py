"""Vector quantizer of the VQGAN tokenizer, plus codebook-usage tracking and dead-code restarts.

Quantization: each latent vector z (last axis) is replaced by its nearest codebook entry e
(squared Euclidean distance, computed in fp32 at HIGHEST matmul precision). Gradients pass
straight through: z_q = z + stop_gradient(e - z).

Losses (VQ-VAE, van den Oord et al. 2017; the non-legacy form):
  codebook_loss   = mean((stop_gradient(z) - e)^2)        moves codes towards the encoder
  commitment_loss = beta * mean((z - stop_gradient(e))^2) keeps the encoder near its codes
with beta = 0.25. (diffusers' default "legacy" quantizer puts beta on the other term; this does
not affect loading its weights, only training.)

Normalised codes (`norm="l2"`, the model config's `codebook_norm`; default "none" = the plain
Euclidean lookup above, as in VQGAN/MaskGIT/diffusers): both the latents and the codebook rows
are l2-normalised before the lookup, the losses and the straight-through estimator, so the
nearest code is the one of highest cosine similarity and the decoder sees unit vectors. With a
low `codebook_dim` (the factorized codes of ViT-VQGAN, Yu et al. 2022, Sec. 3.2: quant_conv
projects to e.g. 8-32 dims) this keeps far more codes in use, because no code can drift away
from the latents by scale alone. The stored codebook stays unnormalised; `lookup` returns unit
vectors.

Codebook usage (reported every step): `usage_metrics(counts)` gives the perplexity
exp(H(p)) of the batch's code histogram p (K when all K codes are used equally, 1 when a single
code is used) and the fraction of codes used at least once.

Dead codes (the documented handling): the trainer keeps an exponential moving average of each
code's per-step usage frequency (`update_usage_ema`). Every `restart_every` steps, codes whose
average falls below `threshold / codebook_size` (i.e. used `threshold` times less than uniform)
are re-initialised to encoder outputs drawn at random from the current batch
(`restart_dead_codes`), the "codebook restart" of Dhariwal et al. 2020 (Jukebox) and
Zeghidour et al. 2021. Their usage average is reset to uniform so they get time to be picked.
Restarts keep every code in use, which is not always wanted: on images with large flat areas
(the shapes demo) the live codes share out the flat-area latents, so the same flat patch gets
many different ids (high token entropy, which the masked transformers then have to model).
`restart_every=0` turns restarts off.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from muse_jax.models import layers as L


CODEBOOK_NORMS = ("none", "l2")


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """x / max(||x||, eps) over the last axis (fp32)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class QuantizerOutput:
  quantized: jax.Array        # [..., D] straight-through quantized latents (fp32)
  ids: jax.Array              # [...] int32 code indices
  codebook_loss: jax.Array    # scalar
  commitment_loss: jax.Array  # scalar, already multiplied by beta
  counts: jax.Array           # [K] float32 histogram of ids over the batch


def nearest_code(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """Index of the nearest codebook row for every vector z[..., :] (argmin ||z - e||^2).

  ||z||^2 is the same for every code and left out; ties go to the lowest index.
  """
  z = z.astype(jnp.float32)
  e = codebook.astype(jnp.float32)
  dots = jnp.einsum("...d,kd->...k", z, e, precision=jax.lax.Precision.HIGHEST)
  dist = jnp.sum(e * e, axis=-1) - 2.0 * dots
  return jnp.argmin(dist, axis=-1).astype(jnp.int32)


def code_counts(ids: jax.Array, codebook_size: int) -> jax.Array:
  """Histogram [K] of code ids (a scatter-add, never a [N, K] one-hot)."""
  return jnp.zeros((codebook_size,), jnp.float32).at[ids.reshape(-1)].add(1.0)


def usage_metrics(counts: jax.Array) -> dict[str, jax.Array]:
  """Perplexity of the code histogram and the fraction of codes used at least once."""
  counts = counts.astype(jnp.float32)
  p = counts / jnp.maximum(jnp.sum(counts), 1.0)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return {"codebook_perplexity": jnp.exp(entropy),
          "codebook_used_fraction": jnp.mean((counts > 0).astype(jnp.float32))}


def update_usage_ema(usage_ema: jax.Array, counts: jax.Array, decay: float) -> jax.Array:
  """EMA of each code's usage frequency (counts normalised to sum 1 per step)."""
  freq = counts / jnp.maximum(jnp.sum(counts), 1.0)
  return decay * usage_ema + (1.0 - decay) * freq


def restart_dead_codes(codebook: jax.Array, usage_ema: jax.Array, latents: jax.Array,
                       key: jax.Array, threshold: float = 0.03):
  """Re-initialise codes with usage_ema < threshold / K to random rows of `latents`.

  latents: encoder outputs [..., D] of the current batch (pre-quantization). Returns
  (codebook, usage_ema, number_restarted). Restarted codes get usage 1/K (uniform).
  """
  k, d = codebook.shape
  flat = latents.reshape(-1, d).astype(codebook.dtype)
  dead = usage_ema < (threshold / k)
  pick = jax.random.randint(key, (k,), 0, flat.shape[0])
  codebook = jnp.where(dead[:, None], flat[pick], codebook)
  usage_ema = jnp.where(dead, 1.0 / k, usage_ema)
  return codebook, usage_ema, jnp.sum(dead.astype(jnp.int32))


class VectorQuantizer(nnx.Module):
  """Codebook [K, D] (`embedding`, named like diffusers' `quantize.embedding.weight`).

  norm: "none" (Euclidean lookup) or "l2" (latents and codes l2-normalised; module docstring).
  """

  def __init__(self, codebook_size: int, dim: int, *, rngs: nnx.Rngs, beta: float = 0.25,
               param_dtype=jnp.float32, norm: str = "none"):
    if norm not in CODEBOOK_NORMS:
      raise ValueError(f"codebook norm must be one of {CODEBOOK_NORMS}, got {norm!r}")
    self.codebook_size, self.dim, self.beta, self.norm = codebook_size, dim, beta, norm
    init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "uniform", in_axis=1, out_axis=0)
    self.embedding = L.param(rngs, init, (codebook_size, dim), ("codebook", None), param_dtype)

  def _normed(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return l2_normalize(x) if self.norm == "l2" else x

  def codes(self) -> jax.Array:
    """The codebook as the lookup uses it [K, D] (fp32; unit rows when norm="l2")."""
    return self._normed(self.embedding[...])

  def nearest(self, z: jax.Array) -> jax.Array:
    return nearest_code(self._normed(z), self.codes())

  def lookup(self, ids: jax.Array) -> jax.Array:
    """ids [...] -> code vectors [..., D] (fp32)."""
    return jnp.take(self.codes(), ids, axis=0)

  def __call__(self, z: jax.Array) -> QuantizerOutput:
    z = self._normed(z)
    ids = nearest_code(z, self.codes())
    e = self.lookup(ids)
    codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(z) - e))
    commitment_loss = self.beta * jnp.mean(jnp.square(z - jax.lax.stop_gradient(e)))
    quantized = z + jax.lax.stop_gradient(e - z)
    return QuantizerOutput(quantized, ids, codebook_loss, commitment_loss,
                           code_counts(ids, self.codebook_size))
