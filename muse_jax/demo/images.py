"""Image helpers of the demo: uint8 conversion, PNG rows, batched generation (grids:
muse_jax.sampling.image_io.save_grid)."""
from __future__ import annotations

import numpy as np

from muse_jax.sampling.image_io import save_grid


def to_uint8(images) -> np.ndarray:
  """[0, 1] floats -> uint8 (rounded, clipped)."""
  return np.round(np.clip(np.asarray(images, np.float32), 0, 1) * 255).astype(np.uint8)


def generate_batched(pipe, captions, batch: int, seed: int) -> np.ndarray:
  """`pipe.generate` over `captions` in fixed-size batches (one compiled shape)."""
  out = []
  for i in range(0, len(captions), batch):
    chunk = captions[i:i + batch]
    pad = batch - len(chunk)  # one compiled shape for every call
    res = pipe.generate(chunk + [chunk[-1]] * pad, seed=seed + i)
    out.append(res.images[:len(chunk)])
  return np.concatenate(out)


def mask_view(image, mask) -> np.ndarray:
  """The input with the regenerated region (mask True) shown in mid-grey."""
  out = image.copy()
  out[np.asarray(mask, bool)] = 128
  return out


def save_row(panels, path: str, scale: int, gap: int = 2) -> None:
  """Images side by side (white gaps), upscaled (nearest) by `scale`, as a PNG."""
  save_grid(np.stack(panels), path, len(panels), scale, gap)
