"""The image input the evaluation networks (Inception, CLIP) take, checked in one place."""
from __future__ import annotations

import jax
import numpy as np


def validate_images(images, network: str = "") -> None:
  """Raise ValueError unless `images` is [B, H, W, 3], uint8 or float with values in [0, 1].

  `network` names the model in the message. The value range is checked only for concrete
  arrays (not inside `jax.jit`).
  """
  what = f"{network} images" if network else "images"
  shape, dtype = tuple(np.shape(images)), np.dtype(images.dtype)
  if len(shape) != 4 or shape[-1] != 3:
    raise ValueError(f"{what} must be [batch, height, width, 3] (NHWC, RGB), got shape {shape}")
  if dtype == np.uint8:
    return
  if not np.issubdtype(dtype, np.floating):
    raise ValueError(f"{what} must be uint8 in [0, 255] or float in [0, 1], got dtype {dtype}")
  if isinstance(images, jax.core.Tracer) or 0 in shape:
    return
  lo, hi = float(np.min(images)), float(np.max(images))
  if not (0.0 <= lo and hi <= 1.0):   # also rejects NaN
    raise ValueError(f"float {what} must lie in [0, 1], got values in [{lo}, {hi}] (pass "
                     "0..255 pixels as uint8, and clip decoded images to [0, 1])")
