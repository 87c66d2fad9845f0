"""Images and masks on the host for sampling and editing: array checks, resizing, PNG files."""
from __future__ import annotations

import io
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from muse_jax import paths


def as_float_images(images) -> np.ndarray:
  """[H, W, 3] or [B, H, W, 3], uint8 or float in [0, 1] -> float32 [B, H, W, 3]."""
  x = np.asarray(images)
  if x.ndim == 3:
    x = x[None]
  if x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f"images must be [H, W, 3] or [B, H, W, 3] RGB, got shape {x.shape}")
  if x.dtype == np.uint8:
    return x.astype(np.float32) / 255.0
  return np.clip(x.astype(np.float32), 0.0, 1.0)


def as_bool_masks(mask, batch: int) -> np.ndarray:
  """[H, W] or [B, H, W] (bool, 0/1 or 0..255) -> bool [B, H, W]; True = regenerate."""
  m = np.asarray(mask)
  if m.ndim == 2:
    m = np.broadcast_to(m[None], (batch,) + m.shape)
  if m.ndim != 3 or m.shape[0] != batch:
    raise ValueError(f"mask must be [H, W] or [{batch}, H, W], got shape {m.shape}")
  if m.dtype == np.bool_:
    return m
  threshold = 127 if m.dtype == np.uint8 or m.max() > 1 else 0.5
  return m > threshold


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """Area-style (antialiased) resize of float [B, H, W, 3] to [B, size, size, 3]."""
  if images.shape[1:3] == (size, size):
    return images
  out = jax.image.resize(jnp.asarray(images), (images.shape[0], size, size, 3), "linear",
                         antialias=True)
  return np.clip(np.asarray(out), 0.0, 1.0)


def save_images(images: np.ndarray, path: str) -> list[str]:
  """Writes float [B, H, W, 3] in [0, 1] as PNG: PATH for one image, PATH_<i>.png for more."""
  images = np.asarray(images)
  paths.resolve(path).parent.mkdir(parents=True, exist_ok=True)
  stem, ext = os.path.splitext(os.fspath(path))
  ext = ext or ".png"
  out = [stem + ext] if len(images) == 1 else [f"{stem}_{i}{ext}" for i in range(len(images))]
  for img, p in zip(images, out):
    _write_image(Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)), p)
  return out


def _write_image(im: Image.Image, path: str) -> None:
  """An image file written atomically (muse_jax.paths.write_atomic), local or on gs://; the
  format follows the extension (PNG when PIL does not know it)."""
  buf = io.BytesIO()
  im.save(buf, format=Image.registered_extensions().get(os.path.splitext(path)[1].lower(), "PNG"))
  paths.write_atomic(path, buf.getvalue())


def _load_square(path: str, size: int, mode: str, resample) -> np.ndarray:
  """An image file converted to `mode`, center-cropped to a square, resized to size x size."""
  with Image.open(io.BytesIO(paths.resolve(path).read_bytes())) as im:
    im = im.convert(mode)
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return np.asarray(im.resize((size, size), resample))


def load_image(path: str, size: int) -> np.ndarray:
  """An RGB image file, center-cropped to a square and resized to size x size; float [0, 1]."""
  return _load_square(path, size, "RGB", Image.BICUBIC).astype(np.float32) / 255.0


def load_mask(path: str, size: int) -> np.ndarray:
  """A mask image (white = regenerate) cropped like `load_image`, nearest-resized: bool."""
  return _load_square(path, size, "L", Image.NEAREST) > 127


def tile(images: np.ndarray, columns: int = 8, gap: int = 2) -> np.ndarray:
  """uint8 images [N, H, W, 3] row by row in `columns` columns with white gaps (uint8)."""
  n, h, w = images.shape[:3]
  cols = min(columns, n)
  rows = -(-n // cols)
  canvas = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
  for i, img in enumerate(images):
    r, c = divmod(i, cols)
    canvas[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = img
  return canvas


def save_grid(images, path: str, columns: int, scale: int = 0, gap: int = 2) -> None:
  """uint8 images [N, H, W, 3] row by row in `columns` columns with white gaps, enlarged
  (nearest) by `scale` (0: enough for 128 px per image), written atomically as a PNG."""
  h, w = images.shape[1:3]
  scale = scale or max(1, -(-128 // max(h, w)))
  im = Image.fromarray(tile(images, columns, gap))
  _write_image(im.resize((im.width * scale, im.height * scale), Image.NEAREST), path)
