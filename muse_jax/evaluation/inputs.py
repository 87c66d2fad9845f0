"""What an evaluation reads: images from a folder or a .npz (captions: `captions.py`).

Everything is checked before any work starts, so that a bad input fails in one line at once
rather than hours into a run:
- an image folder scored against captions (`ImageSet.for_captions`): the image of caption i is
  the file whose name, without its extension (.png, .jpg, .jpeg, .webp, .bmp), is the integer
  i (leading zeros allowed: 7.png, 000007.png). Every caption needs exactly one; other files
  are ignored.
- a reference folder (`ImageSet.all_files`): every image file, in name order.
- a .npz holding `images` [N, H, W, 3], uint8 or float in [0, 1]: row i goes with caption i.
Files are read as 8-bit RGB: RGB files as they are, grayscale, palette and CMYK files
converted to RGB; files with alpha or more than 8 bits per channel are refused. All images of
a set must have one size, unless `resize` is given: then each is center-cropped to a square and
resized to resize x resize with PIL's bicubic filter (as `muse_jax.sample` reads images).
Images are scored as uint8: float images become round(255 x) (what saving them as PNG gives).
"""
from __future__ import annotations

import hashlib
import os
from typing import Optional, Sequence

import numpy as np

from muse_jax.evaluation.captions import read as read_captions  # noqa: F401 (the caption sets)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CONVERTED_MODES = ("L", "P", "CMYK")


def first(captions: list[str], num: Optional[int], path: str) -> list[str]:
  """The first `num` captions (all when num is None)."""
  if num is None:
    return captions
  if num < 1 or num > len(captions):
    raise ValueError(f"--num={num}: {path} holds {len(captions)} captions; give 1.."
                     f"{len(captions)}")
  return captions[:num]


def captions_digest(captions: Sequence[str]) -> str:
  return hashlib.sha256("\n".join(captions).encode("utf-8")).hexdigest()


def to_uint8(images, where: str) -> np.ndarray:
  """[B, H, W, 3] uint8, or float in [0, 1] (rounded to uint8); anything else is refused."""
  x = np.asarray(images)
  if x.ndim != 4 or x.shape[-1] != 3 or 0 in x.shape[1:3]:
    raise ValueError(f"{where}: images must be [N, height, width, 3] (RGB), got shape "
                     f"{x.shape}")
  if x.dtype == np.uint8:
    return x
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"{where}: images must be uint8 (0..255) or float in [0, 1], got dtype "
                     f"{x.dtype}")
  if x.size:
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (0.0 <= lo and hi <= 1.0):   # also refuses NaN
      raise ValueError(f"{where}: float images must lie in [0, 1], got values in [{lo:g}, "
                       f"{hi:g}] (give 0..255 pixels as uint8)")
  return np.round(x.astype(np.float32) * 255).astype(np.uint8)


def _read_file(path: str, resize: Optional[int]) -> np.ndarray:
  from PIL import Image
  with Image.open(path) as im:
    if im.mode != "RGB":
      im = im.convert("RGB")
    if resize:
      w, h = im.size
      s = min(w, h)
      im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
      im = im.resize((resize, resize), Image.BICUBIC)
    return np.asarray(im, np.uint8)


def _header(path: str) -> tuple[tuple[int, int], str]:
  """((width, height), mode) without decoding the pixels; refuses unreadable files."""
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as im:
      size, mode = im.size, im.mode
      alpha = mode == "P" and "transparency" in im.info
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f"{path}: not a readable image ({e.__class__.__name__})") from None
  if alpha or (mode != "RGB" and mode not in CONVERTED_MODES):
    raise ValueError(f"{path}: image mode {mode}{' with transparency' if alpha else ''}; "
                     "give 8-bit RGB (or grayscale/palette) images without alpha")
  return size, mode


class ImageSet:
  """Images by index from a list of files or from an in-memory array (see the module
  docstring); `load(indices)` -> uint8 [B, H, W, 3]."""

  def __init__(self, files: Optional[list[str]] = None, array: Optional[np.ndarray] = None,
               resize: Optional[int] = None, where: str = ""):
    self.files, self.array, self.resize, self.where = files, array, resize, where
    if array is not None:
      self.size = tuple(array.shape[1:3])
      return
    if resize is not None and resize < 1:
      raise ValueError(f"{where}: resize must be a positive size, got {resize}")
    sizes = {}
    for f in files:
      sizes[f] = _header(f)[0]
    if resize:
      self.size = (resize, resize)
      return
    first = files[0]
    for f, s in sizes.items():
      if s != sizes[first]:
        raise ValueError(f"images of one set must have one size: {f} is {s[0]}x{s[1]}, "
                         f"{first} is {sizes[first][0]}x{sizes[first][1]}")
    w, h = sizes[first]
    self.size = (h, w)

  def digest(self) -> str:
    """Identifies the set (for resuming): each file's path, byte size and modification time,
    or an array's bytes; and the resize."""
    h = hashlib.sha256(f"resize={self.resize}\n".encode())
    if self.array is not None:
      h.update(np.ascontiguousarray(self.array).tobytes())
    else:
      for f in self.files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()

  def __len__(self) -> int:
    return len(self.files) if self.array is None else len(self.array)

  def load(self, indices: Sequence[int]) -> np.ndarray:
    if self.array is not None:
      return self.array[np.asarray(indices, np.int64)]
    images = [_read_file(self.files[i], self.resize) for i in indices]
    for i, img in zip(indices, images):
      if img.shape[:2] != self.size:
        raise ValueError(f"{self.files[i]} changed size while being read ({img.shape[:2]})")
    return np.stack(images)

  @classmethod
  def for_captions(cls, path: str, num: int) -> "ImageSet":
    """Images of captions 0..num-1 from a folder (named by index) or a .npz (`images`)."""
    if os.path.isfile(path) and path.endswith(".npz"):
      with np.load(path) as z:
        if "images" not in z.files:
          raise ValueError(f"--images={path} has no array 'images' (found {z.files})")
        array = z["images"]
      if array.ndim >= 1 and len(array) < num:
        raise ValueError(f"--images={path} holds {len(array)} images for {num} captions")
      return cls(array=to_uint8(array[:num], f"--images={path}"), where=path)
    if not os.path.isdir(path):
      raise FileNotFoundError(f"--images={path}: no such directory (or .npz file)")
    by_index: dict[int, str] = {}
    for name in sorted(os.listdir(path)):
      stem, ext = os.path.splitext(name)
      if ext.lower() not in IMAGE_EXTENSIONS or not stem.isdigit() or int(stem) >= num:
        continue
      if int(stem) in by_index:
        raise ValueError(f"--images={path}: two images for caption {int(stem)}: "
                         f"{os.path.basename(by_index[int(stem)])} and {name}")
      by_index[int(stem)] = os.path.join(path, name)
    missing = [i for i in range(num) if i not in by_index]
    if missing:
      raise ValueError(f"--images={path}: no image for {len(missing)} of {num} captions "
                       f"(first: {missing[:5]}); caption i needs a file named i or 00000i "
                       f"with an image extension ({', '.join(IMAGE_EXTENSIONS)})")
    return cls(files=[by_index[i] for i in range(num)], where=path)

  @classmethod
  def all_files(cls, path: str, resize: Optional[int] = None) -> "ImageSet":
    """Every image file of a folder, in name order (a reference set)."""
    if not os.path.isdir(path):
      raise FileNotFoundError(f"--reference_images={path}: no such directory")
    files = sorted(os.path.join(path, f) for f in os.listdir(path)
                   if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
    if not files:
      raise ValueError(f"--reference_images={path} holds no images "
                       f"({', '.join(IMAGE_EXTENSIONS)})")
    return cls(files=files, resize=resize, where=path)
