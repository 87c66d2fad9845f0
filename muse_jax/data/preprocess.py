"""Preprocessing of raw image-caption records, with every skip counted by reason.

Images are decoded with PIL (JPEG, PNG, WebP, GIF (first frame), BMP, TIFF, ...), converted to
RGB (grayscale, 16-bit, palette, RGBA/LA composited over white, CMYK), and for each configured
resolution the shorter side is resized to it and a square is cropped (centre, or a random
offset along the longer side for VQGAN training). Captions are NFKC-normalised, control
characters become spaces, whitespace is collapsed, and long captions are cut at a word boundary.

Nothing here raises on bad data. A record is skipped, and counted in a `SkipCounter` under one
reason (`SKIP_REASONS`), when:
  missing_image / missing_caption / corrupt_record   the source could not supply it (sources.py)
  empty_caption     nothing left after normalisation
  empty_file        zero bytes of image
  undecodable       not an image PIL can read (e.g. a text file named .jpg)
  truncated         the image data ends early
  too_large         width*height > max_pixels, checked from the header before decoding
  too_small         shorter side < min_size, checked from the header before decoding
  unsupported_mode  a pixel format with no RGB conversion
Kept-but-changed records are counted under `NOTE_REASONS` (caption_truncated).

The caption is checked first (it is cheap), then the image. This module uses numpy and PIL only.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import threading
import unicodedata
import warnings
import zlib
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

SKIP_REASONS = ("missing_image", "missing_caption", "corrupt_record", "empty_caption",
                "empty_file", "undecodable", "truncated", "too_large", "too_small",
                "unsupported_mode")
NOTE_REASONS = ("caption_truncated",)
WHITE = (255, 255, 255)


class SkipExample(Exception):
  """Raised inside preprocessing to skip a record; `reason` is one of SKIP_REASONS."""

  def __init__(self, reason: str, detail: str = ""):
    if reason not in SKIP_REASONS:
      raise ValueError(f"unknown skip reason {reason!r}")
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason


class SkipCounter:
  """Thread-safe counts: records seen and kept, skips by reason, notes (kept but changed).

  With `record_ids` (the default) it also keeps the id of every skipped record with its
  reason, so that precompute can list them per shard; a long-lived counter over an unbounded
  stream passes False.
  """

  def __init__(self, record_ids: bool = True):
    self._lock = threading.Lock()
    self.seen = 0
    self.kept = 0
    self.skipped: collections.Counter[str] = collections.Counter()
    self.notes: collections.Counter[str] = collections.Counter()
    self.record_ids = record_ids
    self._skipped_ids: list[tuple[str, str]] = []

  def count_seen(self) -> None:
    with self._lock:
      self.seen += 1

  def count_kept(self) -> None:
    with self._lock:
      self.kept += 1

  def skip(self, reason: str, example_id: str | None = None) -> None:
    if reason not in SKIP_REASONS:
      raise ValueError(f"unknown skip reason {reason!r}; use one of {SKIP_REASONS}")
    with self._lock:
      self.skipped[reason] += 1
      if self.record_ids and example_id is not None:
        self._skipped_ids.append((str(example_id), reason))

  def skipped_ids(self) -> list[list[str]]:
    """[[id, reason], ...] of the skipped records, sorted (worker threads finish in any
    order, so the order of skips is not the source's)."""
    with self._lock:
      return [list(p) for p in sorted(self._skipped_ids)]

  def note(self, reason: str) -> None:
    if reason not in NOTE_REASONS:
      raise ValueError(f"unknown note {reason!r}; use one of {NOTE_REASONS}")
    with self._lock:
      self.notes[reason] += 1

  @property
  def total_skipped(self) -> int:
    return sum(self.skipped.values())

  def merge(self, other: SkipCounter) -> None:
    with self._lock:
      self.seen += other.seen
      self.kept += other.kept
      self.skipped.update(other.skipped)
      self.notes.update(other.notes)
      if self.record_ids:
        self._skipped_ids += other._skipped_ids  # pylint: disable=protected-access

  def as_dict(self) -> dict[str, int]:
    """Flat counts: seen, kept, skipped, skipped/<reason>, note/<reason> (non-zero only)."""
    with self._lock:
      out = {"seen": self.seen, "kept": self.kept, "skipped": sum(self.skipped.values())}
      out.update({f"skipped/{k}": v for k, v in sorted(self.skipped.items()) if v})
      out.update({f"note/{k}": v for k, v in sorted(self.notes.items()) if v})
    return out

  def __str__(self) -> str:
    return ", ".join(f"{k}={v}" for k, v in self.as_dict().items())


@dataclasses.dataclass(frozen=True)
class PreprocessOptions:
  """How records become examples. `resolutions` are square output sides."""
  resolutions: tuple[int, ...] = (256, 512)
  min_size: int = 128
  max_pixels: int = 64_000_000
  max_caption_chars: int = 512
  random_crop: bool = False
  seed: int = 0

  def __post_init__(self):
    if not self.resolutions or any(int(r) <= 0 for r in self.resolutions):
      raise ValueError(f"resolutions must be positive sides, got {self.resolutions}")
    if self.min_size < 1 or self.max_pixels < 1 or self.max_caption_chars < 1:
      raise ValueError("min_size, max_pixels and max_caption_chars must be >= 1")


@dataclasses.dataclass
class RawExample:
  """One record from a source. Exactly one of `image_bytes` (encoded file), `image_array`
  (decoded HxW[xC] array) or `images` ({resolution: uint8 HxWx3}, already final) is set, unless
  the source hit a problem, then `error` is a skip reason.

  A source may instead defer the work: `load()` returns the real RawExample and runs in the
  preprocessing worker thread, not in the source's iterator (e.g. drawing a shapes scene).
  """
  id: str
  caption: str | bytes | None
  image_bytes: bytes | None = None
  image_array: np.ndarray | None = None
  images: dict[int, np.ndarray] | None = None
  error: str | None = None
  load: Callable[[], "RawExample"] | None = None


# --- Captions -------------------------------------------------------------------------------


def normalize_caption(text: str | bytes | None, max_chars: int) -> tuple[str, bool]:
  """(caption, was_truncated). Raises SkipExample for a missing or empty caption."""
  if text is None:
    raise SkipExample("missing_caption")
  if isinstance(text, (bytes, bytearray)):
    text = bytes(text).decode("utf-8", errors="replace")
  text = unicodedata.normalize("NFKC", str(text))
  chars = []
  for ch in text:
    cat = unicodedata.category(ch)
    if cat == "Cf":  # zero-width and bidi marks: drop
      continue
    chars.append(" " if cat in ("Cc", "Zl", "Zp") else ch)
  text = " ".join("".join(chars).split())
  if not text:
    raise SkipExample("empty_caption")
  if len(text) <= max_chars:
    return text, False
  cut = text[:max_chars]
  space = cut.rfind(" ")
  if space >= max_chars // 2 and not text[max_chars].isspace():
    cut = cut[:space]
  return cut.rstrip(), True


# --- Images ---------------------------------------------------------------------------------


def _webp_is_truncated(data: bytes) -> bool:
  if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
    return False
  return int.from_bytes(data[4:8], "little") + 8 > len(data)


def open_image(data: bytes, min_size: int, max_pixels: int,
               draft_side: int | None = None) -> Image.Image:
  """Decode encoded image bytes (first frame), checking the size from the header first."""
  if not data:
    raise SkipExample("empty_file")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      img = Image.open(io.BytesIO(data))
  except Image.DecompressionBombError as e:
    raise SkipExample("too_large", str(e)) from None
  except Exception as e:  # noqa: BLE001 -- PIL raises many types on garbage.
    # WebP decoding starts in open(); its RIFF header tells a cut-off file from garbage.
    reason = "truncated" if _webp_is_truncated(data) else "undecodable"
    raise SkipExample(reason, f"{type(e).__name__}: {e}") from None
  w, h = img.size
  if w * h > max_pixels:
    raise SkipExample("too_large", f"{w}x{h} > {max_pixels} pixels")
  if min(w, h) < min_size:
    raise SkipExample("too_small", f"{w}x{h}, shorter side < {min_size}")
  if draft_side and img.format == "JPEG":
    # Let the JPEG decoder scale down by 1/2, 1/4 or 1/8 while keeping the short side >= draft.
    scale = draft_side / min(w, h)
    if scale < 0.5:
      img.draft(None, (int(np.ceil(w * scale)), int(np.ceil(h * scale))))
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      img.seek(0)
      img.load()
  except Exception as e:  # noqa: BLE001
    msg = f"{type(e).__name__}: {e}"
    if isinstance(e, EOFError) or "truncated" in str(e) or _webp_is_truncated(data):
      raise SkipExample("truncated", msg) from None
    raise SkipExample("undecodable", msg) from None
  return img


def to_rgb(img: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
  """Any PIL mode to 8-bit RGB; transparency is composited over `background`."""
  mode = img.mode
  if mode == "RGB":
    return img
  try:
    if mode.startswith("I") or mode == "F":
      arr = np.asarray(img).astype(np.float64)
      if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
        arr = arr / 257.0  # 16-bit to 8-bit
      elif mode == "F" and arr.max(initial=0) <= 1.0:
        arr = arr * 255.0
      gray = np.clip(np.round(arr), 0, 255).astype(np.uint8)
      if gray.ndim != 2:
        raise ValueError(f"unexpected array shape {gray.shape} for mode {mode}")
      return Image.fromarray(gray).convert("RGB")
    if mode == "P":
      img = img.convert("RGBA" if "transparency" in img.info else "RGB")
      if img.mode == "RGB":
        return img
      mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
      rgba = img.convert("RGBA")
      base = Image.new("RGBA", rgba.size, background + (255,))
      return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")  # 1, L, CMYK, YCbCr, HSV, ...
  except Exception as e:  # noqa: BLE001
    raise SkipExample("unsupported_mode", f"{mode}: {type(e).__name__}: {e}") from None


def resize_and_crop(img: Image.Image, resolution: int, random_crop: bool = False,
                    rng: np.random.Generator | None = None) -> np.ndarray:
  """Resize the shorter side to `resolution` and crop a square: uint8 (res, res, 3)."""
  w, h = img.size
  side = min(w, h)
  if random_crop:
    rng = rng if rng is not None else np.random.default_rng()
    x0 = float(rng.integers(0, w - side + 1))
    y0 = float(rng.integers(0, h - side + 1))
  else:
    x0, y0 = (w - side) / 2, (h - side) / 2
  out = img.resize((resolution, resolution), Image.Resampling.BICUBIC,
                   box=(x0, y0, x0 + side, y0 + side), reducing_gap=3.0)
  return np.asarray(out, dtype=np.uint8)


def _array_to_image(arr: np.ndarray) -> Image.Image:
  arr = np.asarray(arr)
  if arr.ndim == 3 and arr.shape[-1] == 1:
    arr = arr[..., 0]
  if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
    raise SkipExample("unsupported_mode", f"array of shape {arr.shape}")
  if arr.dtype == np.uint16:
    arr = np.round(arr / 257.0).astype(np.uint8)
  elif arr.dtype != np.uint8:
    raise SkipExample("unsupported_mode", f"array of dtype {arr.dtype}")
  return Image.fromarray(arr)


# --- Records to examples --------------------------------------------------------------------


def _crop_rng(options: PreprocessOptions, example_id: str) -> np.random.Generator:
  return np.random.default_rng([options.seed, zlib.crc32(example_id.encode("utf-8"))])


def process_example(raw: RawExample, options: PreprocessOptions) -> tuple[dict, bool]:
  """({'id', 'image': {res: uint8 HxWx3}, 'caption'}, caption_truncated); raises SkipExample."""
  if raw.load is not None:
    raw = raw.load()
  if raw.error is not None:
    raise SkipExample(raw.error)
  caption, truncated = normalize_caption(raw.caption, options.max_caption_chars)
  resolutions = tuple(int(r) for r in options.resolutions)
  if raw.images is not None:
    missing = [r for r in resolutions if r not in raw.images]
    if missing:
      raise ValueError(f"example {raw.id} has no image at resolutions {missing}")
    return {"id": raw.id, "image": {r: raw.images[r] for r in resolutions},
            "caption": caption}, truncated
  if raw.image_bytes is not None:
    img = open_image(raw.image_bytes, options.min_size, options.max_pixels, max(resolutions))
  elif raw.image_array is not None:
    img = _array_to_image(raw.image_array)
    w, h = img.size
    if w * h > options.max_pixels:
      raise SkipExample("too_large", f"{w}x{h}")
    if min(w, h) < options.min_size:
      raise SkipExample("too_small", f"{w}x{h}")
  else:
    raise SkipExample("missing_image")
  img = to_rgb(img)
  rng = _crop_rng(options, raw.id) if options.random_crop else None
  images = {r: resize_and_crop(img, r, options.random_crop, rng) for r in resolutions}
  return {"id": raw.id, "image": images, "caption": caption}, truncated


def preprocess_example(raw: RawExample, options: PreprocessOptions,
                       counter: SkipCounter) -> dict | None:
  """`process_example`, counting: returns None (and counts the reason) for a skipped record."""
  counter.count_seen()
  try:
    example, truncated = process_example(raw, options)
  except SkipExample as e:
    counter.skip(e.reason, raw.id)
    return None
  if truncated:
    counter.note("caption_truncated")
  counter.count_kept()
  return example


def preprocess_stream(raw_examples: Iterable[RawExample], options: PreprocessOptions,
                      counter: SkipCounter, num_workers: int = 1,
                      prefetch: int | None = None) -> Iterator[dict]:
  """Preprocess records in order, on `num_workers` threads (PIL releases the GIL)."""
  if num_workers <= 1:
    for raw in raw_examples:
      example = preprocess_example(raw, options, counter)
      if example is not None:
        yield example
    return
  prefetch = prefetch or 4 * num_workers
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    pending: collections.deque = collections.deque()
    for raw in raw_examples:
      pending.append(pool.submit(preprocess_example, raw, options, counter))
      if len(pending) >= prefetch:
        example = pending.popleft().result()
        if example is not None:
          yield example
    while pending:
      example = pending.popleft().result()
      if example is not None:
        yield example


def options_from_config(config) -> PreprocessOptions:
  """PreprocessOptions from the `data` config section (muse_jax/configs/common_data.py)."""
  return PreprocessOptions(
      resolutions=tuple(int(r) for r in config.resolutions),
      min_size=int(config.min_size),
      max_pixels=int(config.max_pixels),
      max_caption_chars=int(config.max_caption_chars),
      random_crop=bool(config.random_crop),
      seed=int(config.seed),
  )


def shard_indices(num: int, process_index: int, process_count: int) -> Sequence[int]:
  """Indices of a disjoint, covering slice for this process: process_index::process_count."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index ({process_index}) < process_count "
                     f"({process_count})")
  return range(process_index, num, process_count)
