"""Loss functions of VQGAN training, as pure functions (all reductions in fp32).

Generator (tokenizer) objective:
  L_G = w_rec * rec(x, x_hat) + w_perc * LPIPS(x, x_hat) + codebook + beta * commitment
        + gan_on(step) * lambda * g_adv(D(x_hat))
with lambda = `adversarial_weight` ("fixed", Muse Table 5: 0.1) or, in "adaptive" mode (taming
transformers), adversarial_weight * ||dL_rec/dW_last|| / (||dL_adv/dW_last|| + 1e-4), clipped to
[0, 1e4], W_last being the decoder's output conv kernel.

Discriminator objective:
  L_D = gan_on(step) * (d_adv(D(x), D(x_hat)) + w_lecam * R_LC)
with LeCAM regularisation (Tseng et al. 2021):
  R_LC = mean(relu(D(x) - a_fake)^2) + mean(relu(a_real - D(x_hat))^2)
a_real / a_fake are EMAs (decay 0.999 by default) of the mean real / fake logits, updated with
the current batch before R_LC is evaluated (as in the LeCAM reference code) and treated as
constants. The adversarial terms switch on at `disc_start_step` (delayed start).

GAN losses: "hinge"  d = mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat))),  g = -mean(D(x_hat));
            "non_saturating" d = mean(softplus(-D(x))) + mean(softplus(D(x_hat))),
                             g = mean(softplus(-D(x_hat))).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

RECONSTRUCTION_KINDS = ("l1", "l2", "l1+l2")
GAN_KINDS = ("hinge", "non_saturating")


def reconstruction_loss(x: jax.Array, x_hat: jax.Array, kind: str = "l1") -> jax.Array:
  """Mean absolute ("l1"), squared ("l2") error, or their sum ("l1+l2")."""
  diff = x_hat.astype(jnp.float32) - x.astype(jnp.float32)
  if kind == "l1":
    return jnp.mean(jnp.abs(diff))
  if kind == "l2":
    return jnp.mean(jnp.square(diff))
  if kind == "l1+l2":
    return jnp.mean(jnp.abs(diff)) + jnp.mean(jnp.square(diff))
  raise ValueError(f"loss.reconstruction must be one of {RECONSTRUCTION_KINDS}, got {kind!r}")


def psnr(x: jax.Array, x_hat: jax.Array, data_range: float = 2.0) -> jax.Array:
  """Mean over the batch of per-image PSNR in dB (data_range 2 for [-1, 1] images)."""
  mse = jnp.mean(jnp.square(x.astype(jnp.float32) - x_hat.astype(jnp.float32)),
                 axis=tuple(range(1, x.ndim)))
  return jnp.mean(10.0 * jnp.log10(data_range ** 2 / jnp.maximum(mse, 1e-10)))


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array,
                       kind: str = "hinge") -> jax.Array:
  real, fake = real_logits.astype(jnp.float32), fake_logits.astype(jnp.float32)
  if kind == "hinge":
    return jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake))
  if kind == "non_saturating":
    return jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake))
  raise ValueError(f"loss.gan_loss must be one of {GAN_KINDS}, got {kind!r}")


def generator_adversarial_loss(fake_logits: jax.Array, kind: str = "hinge") -> jax.Array:
  fake = fake_logits.astype(jnp.float32)
  if kind == "hinge":
    return -jnp.mean(fake)
  if kind == "non_saturating":
    return jnp.mean(jax.nn.softplus(-fake))
  raise ValueError(f"loss.gan_loss must be one of {GAN_KINDS}, got {kind!r}")


def init_lecam_ema() -> dict[str, jax.Array]:
  return {"real": jnp.zeros((), jnp.float32), "fake": jnp.zeros((), jnp.float32)}


def update_lecam_ema(ema: dict, real_logits: jax.Array, fake_logits: jax.Array,
                     decay: float = 0.999) -> dict[str, jax.Array]:
  real = jnp.mean(jax.lax.stop_gradient(real_logits).astype(jnp.float32))
  fake = jnp.mean(jax.lax.stop_gradient(fake_logits).astype(jnp.float32))
  return {"real": decay * ema["real"] + (1.0 - decay) * real,
          "fake": decay * ema["fake"] + (1.0 - decay) * fake}


def lecam_regularizer(real_logits: jax.Array, fake_logits: jax.Array, ema: dict) -> jax.Array:
  """R_LC = mean(relu(D(x) - a_fake)^2) + mean(relu(a_real - D(x_hat))^2); >= 0."""
  a_real = jax.lax.stop_gradient(ema["real"])
  a_fake = jax.lax.stop_gradient(ema["fake"])
  real, fake = real_logits.astype(jnp.float32), fake_logits.astype(jnp.float32)
  return (jnp.mean(jnp.square(jax.nn.relu(real - a_fake))) +
          jnp.mean(jnp.square(jax.nn.relu(a_real - fake))))


def gan_active(step: jax.Array, start_step: int) -> jax.Array:
  """1.0 from `start_step` on, else 0.0 (the delayed GAN start)."""
  return (jnp.asarray(step) >= start_step).astype(jnp.float32)


def _global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def adaptive_weight(rec_grads, adv_grads, max_weight: float = 1e4, eps: float = 1e-4) -> jax.Array:
  """||rec_grads|| / (||adv_grads|| + eps) clipped to [0, max_weight], as a constant."""
  w = _global_norm(rec_grads) / (_global_norm(adv_grads) + eps)
  return jax.lax.stop_gradient(jnp.clip(w, 0.0, max_weight))


def discriminator_objective(real_logits, fake_logits, lecam_ema, *, step, kind: str,
                            start_step: int, lecam_weight: float, lecam_decay: float):
  """(loss, (new_lecam_ema, metrics)) for the discriminator update."""
  on = gan_active(step, start_step)
  adv = discriminator_loss(real_logits, fake_logits, kind)
  new_ema = update_lecam_ema(lecam_ema, real_logits, fake_logits, lecam_decay)
  # Before the GAN starts the anchors stay put, so they begin from the first real logits.
  new_ema = jax.tree.map(lambda n, o: jnp.where(on > 0, n, o), new_ema, lecam_ema)
  reg = lecam_regularizer(real_logits, fake_logits, new_ema) if lecam_weight else jnp.zeros(())
  loss = on * (adv + lecam_weight * reg)
  metrics = {"d_loss": adv, "d_lecam": reg, "d_real_logit": jnp.mean(real_logits),
             "d_fake_logit": jnp.mean(fake_logits), "lecam_ema_real": new_ema["real"],
             "lecam_ema_fake": new_ema["fake"]}
  return loss, (new_ema, metrics)
