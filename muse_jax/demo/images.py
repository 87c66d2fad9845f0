"""Image helpers of the demo: uint8 conversion, PNG rows and grids, batched generation."""
from __future__ import annotations

import numpy as np


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
  from PIL import Image
  h, w = panels[0].shape[:2]
  canvas = np.full((h, len(panels) * (w + gap) - gap, 3), 255, np.uint8)
  for i, p in enumerate(panels):
    canvas[:, i * (w + gap):i * (w + gap) + w] = p
  im = Image.fromarray(canvas)
  im.resize((im.width * scale, im.height * scale), Image.NEAREST).save(path)


def save_grid(images, path: str, columns: int, scale: int, gap: int = 2) -> None:
  """Images row by row in `columns` columns, upscaled (nearest) by `scale`, as a PNG."""
  from PIL import Image
  n, h, w = images.shape[:3]
  cols = min(columns, n)
  rows = -(-n // cols)
  canvas = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
  for i, img in enumerate(images):
    r, c = divmod(i, cols)
    canvas[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = img
  im = Image.fromarray(canvas)
  im.resize((im.width * scale, im.height * scale), Image.NEAREST).save(path)
