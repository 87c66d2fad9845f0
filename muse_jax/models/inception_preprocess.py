"""Images -> the input of `muse_jax.models.inception.InceptionV3`, as pytorch-fid prepares it.

  x = images / 255 (uint8) or images (float in [0, 1])
  x = bilinear resize to 299 x 299, half-pixel centres, no antialiasing
      (`torch.nn.functional.interpolate(x, (299, 299), mode="bilinear", align_corners=False)`)
  x = 2 x - 1

Both variants take this input. torchvision's pretrained `inception_v3` also expects [-1, 1] at
its first conv: with `transform_input=True` (its default with weights) it maps ImageNet-normalised
inputs, (x - mean) / std, back to 2 x - 1 before Conv2d_1a; here the model is the one built
with `transform_input=False`, so the [-1, 1] input goes straight in (as pytorch-fid's
`InceptionV3(use_fid_inception=False)`, which calls the blocks directly, also does).

Known differences between implementations (FIDs from different pipelines are not comparable):
- clean-fid, mode "clean": each channel of the 0..255 image is resized with PIL's bicubic filter
  (antialiased when shrinking), clipped to [0, 255] but not quantised, then (x - 128) / 128.
  Its mode "legacy_pytorch" is the pytorch-fid path used here.
- pytorch-fid / here: bilinear without antialiasing, so shrinking by more than 2x (e.g. 512 ->
  299) skips pixels and aliases; 2 x - 1 = (255 x - 127.5) / 127.5 rather than (x - 128) / 128.
- TensorFlow's original FID code resizes inside the graph with TF1's `resize_bilinear`, whose
  sample positions are not half-pixel centred (src = dst * in / out).

The resize is two small matrix products (rows, then columns) with torch's weights: for output
index i, src = max((i + 0.5) * in / out - 0.5, 0), i0 = floor(src), i1 = min(i0 + 1, in - 1),
weights 1 - (src - i0) on row i0 and src - i0 on row i1 (`bilinear_matrix`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from muse_jax.models import image_input
from muse_jax.models.inception import INPUT_SIZE


def validate_images(images) -> None:
  """`muse_jax.models.image_input.validate_images`, naming the FID network."""
  image_input.validate_images(images, "FID")


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of torch's bilinear resize (align_corners=False, no antialias).

  Positions in float32 as torch computes them for float32 images: scale = float32(n_in) /
  n_out, src = scale * (i + 0.5) - 0.5 rounded once (a fused multiply-add; the float64 product
  is exact), weights src - i0 and 1 - (src - i0) in float32. These equal the weights of torch
  2.14's CPU kernel exactly; positions rounded differently move the result by up to ~1e-5.
  """
  f32 = np.float32
  scale = f32(n_in) / f32(n_out)
  src = (np.float64(scale) * (np.arange(n_out) + 0.5) - 0.5).astype(f32)
  src = np.maximum(src, f32(0))
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  frac = src - i0.astype(f32)
  m = np.zeros((n_out, n_in), np.float32)
  rows = np.arange(n_out)
  np.add.at(m, (rows, i0), f32(1) - frac)
  np.add.at(m, (rows, i1), frac)
  return m


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """[B, H, W, C] float -> [B, size[0], size[1], C], as `bilinear_matrix` describes."""
  _, h, w, _ = x.shape
  hi = jax.lax.Precision.HIGHEST
  if size[0] != h:
    x = jnp.einsum("oh,bhwc->bowc", bilinear_matrix(h, size[0]), x, precision=hi)
  if size[1] != w:
    x = jnp.einsum("ow,bhwc->bhoc", bilinear_matrix(w, size[1]), x, precision=hi)
  return x


def preprocess(images, size: int = INPUT_SIZE) -> jax.Array:
  """uint8 / [0, 1] float images [B, H, W, 3] -> float32 [B, size, size, 3] in [-1, 1].

  Validates first (`validate_images`). A resize to the same size is the identity, as in torch.
  """
  validate_images(images)
  x = jnp.asarray(images)
  x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
  x = resize_bilinear(x, (size, size))
  return 2.0 * x - 1.0
