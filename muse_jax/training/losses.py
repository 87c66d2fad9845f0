"""Losses of the masked-token stages (base and super-resolution)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_cross_entropy_sums(logits, targets, mask, label_smoothing: float = 0.0):
  """Summed cross-entropy and correct predictions over masked positions only.

  logits [B, T, V] (computed in fp32), targets [B, T] int, mask [B, T] bool.
  Returns (nll_sum, correct_sum); divide by mask.sum() for means. Sums (not means) let
  gradient accumulation reproduce the full-batch gradient exactly. Unmasked positions
  contribute nothing.
  """
  logits = logits.astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  if label_smoothing > 0.0:
    nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
  w = mask.astype(jnp.float32)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return jnp.sum(nll * w), jnp.sum(correct * w)
