"""Images -> the input of `muse_jax.models.clip`, as transformers' `CLIPImageProcessor` makes it.

The processor (torchvision backend, its default in transformers 5) does, per image:
  1. resize so that the shorter side is `size` (224): new short = size, new long =
     int(size * long / short), with torch's antialiased bicubic (`interpolate(..., "bicubic",
     antialias=True, align_corners=False)`); an image already at that size is left as it is;
  2. center crop to size x size: top = int((H - size) / 2), left = int((W - size) / 2);
  3. x / 255, then (x - mean) / std per channel with OpenAI's statistics (MEAN, STD below).
`preprocess` does the same on [B, H, W, 3] NHWC batches of uint8 images, or of float images in
[0, 1] (the processor's result for those when called with `do_rescale=False`, i.e. without
step 3's / 255).

Resize weights (PIL's antialiased filter, which torch implements): for output pixel i,
scale = in / out, centre c = scale (i + 0.5), support s = 2 max(scale, 1); input pixels j with
max(int(c - s + 0.5), 0) <= j < min(int(c + s + 0.5), in) get K((j - c + 0.5) / max(scale, 1)),
normalised to sum 1 per output pixel (taps outside the image are dropped, not replicated), with
Keys' cubic of a = -0.5:
  K(x) = (a + 2)|x|^3 - (a + 3)|x|^2 + 1   for |x| < 1
         a|x|^3 - 5a|x|^2 + 8a|x| - 4a     for 1 <= |x| < 2,   0 beyond.
Each axis is a product with an [out, in] matrix; only the rows and columns that survive the
crop are computed.

The two input types follow torch's two code paths exactly:
- float: weights in float32 with torch's float32 positions (`float_matrix`); differences from
  torch are float round-off.
- uint8: torch (on CPUs) resizes 8-bit images in fixed point as PIL does: weights computed in
  float64, scaled by 2^p (the largest p with max weight * 2^(p+1) < 2^15) and rounded to
  integers (`fixed_point_matrix`); first along the width, then along the height, each pass
  rounding (sum + 2^(p-1)) >> p and clamping to [0, 255], so the intermediate image is 8-bit.
  This is integer arithmetic here too (int32), so results equal the processor's bit for bit.
  (Clamping the intermediate matters: on sharp edges the cubic's overshoot is cut after the
  first pass, so a float resize rounded once at the end differs by many levels there.)

Not handled: PIL images, channel-first layouts, grayscale/RGBA conversion, and the processor's
padding of images smaller than the crop (the resize always reaches the crop size here).
OpenAI's own `clip.load` preprocessing resizes PIL images with PIL's bicubic filter, the same
fixed-point algorithm.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from muse_jax.models import image_input

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
SIZE = 224


def validate_images(images) -> None:
  """`muse_jax.models.image_input.validate_images`, naming the CLIP network."""
  image_input.validate_images(images, "CLIP")


def _keys_cubic(x: np.ndarray, a) -> np.ndarray:
  """K(x) in the dtype of x and a, in torch's order of operations."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x < 1, near, np.where(x < 2, far, np.zeros_like(x)))


def _aa_weights(n_in: int, n_out: int, dtype) -> np.ndarray:
  """[n_out, n_in] normalised weights, positions and sums rounded as torch rounds them when
  its weights are `dtype` (float32 for float images, float64 for the uint8 path)."""
  t = np.dtype(dtype).type
  scale = t(n_in) / t(n_out)
  stretch = max(scale, t(1))
  support = t(2.0 * float(stretch))
  inv = t(1.0 / float(stretch))
  most = math.ceil(support) * 2 + 1
  m = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    c = t(float(scale) * (i + 0.5))
    lo = max(int(float(c - support) + 0.5), 0)
    size = min(max(min(int(float(c + support) + 0.5), n_in) - lo, 0), most)
    j = np.arange(lo, lo + size)
    x = ((j.astype(t) - c).astype(np.float64) + 0.5) * float(inv)
    w = _keys_cubic(x.astype(t), t(-0.5))
    total = t(0)
    for v in w:   # sequential, as torch sums
      total = t(total + v)
    m[i, lo:lo + size] = w / total if total != 0 else w
  return m


@functools.lru_cache(maxsize=64)
def float_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] float32 weights of torch's antialiased bicubic resize of float images."""
  return _aa_weights(n_in, n_out, np.float32).astype(np.float32)


@functools.lru_cache(maxsize=64)
def fixed_point_matrix(n_in: int, n_out: int) -> tuple[np.ndarray, int]:
  """(int32 weights [n_out, n_in], precision p) of torch's and PIL's 8-bit resize."""
  m = _aa_weights(n_in, n_out, np.float64)
  wmax = m.max()
  p = 0
  while p < 22 and int(0.5 + wmax * (1 << (p + 1))) < (1 << 15):
    p += 1
  v = m * (1 << p)
  return np.trunc(np.where(v < 0, v - 0.5, v + 0.5)).astype(np.int32), p


def resized_shape(h: int, w: int, size: int = SIZE) -> tuple[int, int]:
  """(height, width) with the shorter side `size` and the longer int(size * long / short)."""
  if h <= w:
    return size, int(size * w / h)
  return int(size * h / w), size


def _crop(n: int, size: int) -> slice:
  start = int((n - size) / 2.0)
  return slice(start, start + size)


def _fixed_point_pass(x, weights: np.ndarray, p: int, spec: str):
  y = jnp.einsum(spec, jnp.asarray(weights), x, preferred_element_type=jnp.int32)
  return jnp.clip(jnp.right_shift(y + (1 << (p - 1)), p), 0, 255)


def preprocess(images, size: int = SIZE) -> jax.Array:
  """uint8 / [0, 1] float images [B, H, W, 3] -> float32 [B, size, size, 3], normalised.

  Validates first (`validate_images`); the module docstring gives the exact steps.
  """
  validate_images(images)
  x = jnp.asarray(images)
  _, h, w, _ = x.shape
  nh, nw = resized_shape(h, w, size)
  rows, cols = _crop(nh, size), _crop(nw, size)
  if (nh, nw) == (h, w):
    x = x[:, rows, cols].astype(jnp.float32)
  elif x.dtype == jnp.uint8:
    wc, pc = fixed_point_matrix(w, nw)
    wr, pr = fixed_point_matrix(h, nh)
    x = _fixed_point_pass(x.astype(jnp.int32), wc[cols], pc, "ow,bhwc->bhoc")
    x = _fixed_point_pass(x, wr[rows], pr, "oh,bhwc->bowc").astype(jnp.float32)
  else:
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("ow,bhwc->bhoc", float_matrix(w, nw)[cols], x.astype(jnp.float32),
                   precision=hi)
    x = jnp.einsum("oh,bhwc->bowc", float_matrix(h, nh)[rows], x, precision=hi)
  if images.dtype == np.uint8:
    x = x / 255.0
  mean, std = np.asarray(MEAN, np.float32), np.asarray(STD, np.float32)
  return (x - mean) / std
