"""The Muse masking objective's random choices (Muse Sec. 2.6).

Per example, a mask ratio r is drawn from p(r) = 2/pi * (1 - r^2)^(-1/2) on [0, 1] (mean 2/pi
~= 0.64) by inverse CDF: r = sin(pi * u / 2), u ~ U(0, 1). Then ceil(r * T) tokens (at least
one) are masked, chosen uniformly at random.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_mask_ratio(key, batch: int) -> jax.Array:
  u = jax.random.uniform(key, (batch,))
  return jnp.sin(jnp.pi * u / 2)


def sample_mask(key, batch: int, length: int) -> tuple[jax.Array, jax.Array]:
  """Boolean mask [B, T] (True = masked) and the ratios r [B] it was drawn from."""
  k_ratio, k_pos = jax.random.split(key)
  ratio = sample_mask_ratio(k_ratio, batch)
  num = jnp.clip(jnp.ceil(ratio * length), 1, length).astype(jnp.int32)
  scores = jax.random.uniform(k_pos, (batch, length))
  # rank of each position among its row's scores: exactly `num` lowest-ranked are masked
  ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
  return ranks < num[:, None], ratio


def drop_condition(key, text_len: jax.Array, rate: float) -> jax.Array:
  """Classifier-free guidance dropout: text_len set to 0 (null condition) with prob `rate`."""
  if rate <= 0.0:
    return text_len
  drop = jax.random.bernoulli(key, rate, text_len.shape)
  return jnp.where(drop, 0, text_len)
