"""LPIPS perceptual distance (Zhang et al. 2018) with VGG16 features, as a pure function.

  d(x, y) = sum_l mean_hw( w_l . (n(f_l(x)) - n(f_l(y)))^2 )
where f_l are VGG16 activations after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, n() divides by
the channel L2 norm (+1e-10) and w_l >= 0 are LPIPS's learned per-channel weights. Inputs are
first mapped to [-1, 1] and standardised with LPIPS's ScalingLayer (shift
[-.030, -.088, -.188], scale [.458, .448, .450]).

Weights are frozen and come from `muse_jax.weights.vgg_lpips.load_lpips_params`; the params tree
is passed in explicitly (not trained, not checkpointed). Convs run in `dtype` (bf16 for speed),
the normalisation and distance in fp32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# torchvision vgg16.features: conv layer indices and their (in, out) channels.
VGG16_CONVS = ((0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256),
               (12, 256, 256), (14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512),
               (24, 512, 512), (26, 512, 512), (28, 512, 512))
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
SHIFT = jnp.array([-0.030, -0.088, -0.188], jnp.float32)
SCALE = jnp.array([0.458, 0.448, 0.450], jnp.float32)
TAPS = (2, 7, 14, 21, 28)          # conv indices whose ReLU outputs are compared
POOL_AFTER = (2, 7, 14, 21)        # a 2x2 max-pool follows these convs' ReLU


def _conv(x, p, dtype):
  y = jax.lax.conv_general_dilated(x.astype(dtype), p["kernel"].astype(dtype), (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jax.nn.relu(y + p["bias"].astype(dtype))


def vgg16_features(params, x: jax.Array, dtype=jnp.float32) -> list[jax.Array]:
  """x [B, H, W, 3] already scaled -> the five tapped activations."""
  feats = []
  for i, _, _ in VGG16_CONVS:
    x = _conv(x, params["vgg"][str(i)], dtype)
    if i in TAPS:
      feats.append(x)
    if i in POOL_AFTER:
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  return feats


def _normalize(f):
  f = f.astype(jnp.float32)
  return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + 1e-10)


def lpips(params, x: jax.Array, y: jax.Array, *, pixel_range: str = "-1_1",
          dtype=jnp.float32) -> jax.Array:
  """Per-example LPIPS distance [B] between image batches x and y (NHWC, in `pixel_range`)."""
  def prep(im):
    im = im.astype(jnp.float32)
    if pixel_range == "0_1":
      im = im * 2.0 - 1.0
    return (im - SHIFT) / SCALE
  b = x.shape[0]
  feats = vgg16_features(params, jnp.concatenate([prep(x), prep(y)], axis=0), dtype)
  total = jnp.zeros((b,), jnp.float32)
  for k, f in enumerate(feats):
    fx, fy = _normalize(f[:b]), _normalize(f[b:])
    d = jnp.sum(jnp.square(fx - fy) * params["lin"][str(k)].astype(jnp.float32), axis=-1)
    total = total + jnp.mean(d, axis=(1, 2))
  return total
