"""Read safetensors checkpoints (single file or sharded with an index) lazily and safely.

safetensors is data-only (no pickle). Tensors are read one at a time, so converting a large
checkpoint never holds two full copies in host memory. A malformed file or index (a header too
large or not JSON, offsets past the end, an unknown dtype, an index without a weight map or
naming a missing shard) raises WeightsError with one line naming the file and the problem.
A file on gs:// (or another URL) is first copied to a local temporary directory, which lives
as long as the reader: safetensors memory-maps a local file to read tensors one at a time.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Iterator, Mapping

import ml_dtypes  # noqa: F401  registers bfloat16 with numpy, which safetensors asks for
import numpy as np

from muse_jax import paths


class WeightsError(ValueError):
  """A checkpoint does not match the model: the message names every offending key."""


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


class SafetensorsReader(Mapping[str, np.ndarray]):
  """Mapping key -> numpy array over one `.safetensors` file, a directory, or an index json.

  A directory is searched for `model.safetensors.index.json`, then for a single
  `*.safetensors` file. bf16 tensors come back as `ml_dtypes.bfloat16` arrays.
  """

  def __init__(self, path: str):
    from safetensors import SafetensorError, safe_open  # local import: optional dependency
    self._safe_open = safe_open
    # What safetensors raises on a malformed file: its own error for the header and offsets,
    # TypeError for a dtype numpy lacks, OSError for what the OS refuses.
    self._errors = (SafetensorError, OSError, TypeError, ValueError)
    self.path = path
    files = self._resolve(str(path))
    if any(paths.is_url(f) for f in files):
      self._local = tempfile.TemporaryDirectory(prefix="muse_jax_weights_")
      files = [self._copy_local(f, i) for i, f in enumerate(files)]
    self._where: dict[str, str] = {}
    self._shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
      try:
        with safe_open(f, framework="numpy") as h:
          for k in h.keys():
            self._where[k] = f
            self._shapes[k] = tuple(h.get_slice(k).get_shape())
      except self._errors as e:
        raise WeightsError(f"{f}: not a readable safetensors file ({_first_line(e)})") from None

  def _copy_local(self, url: str, i: int) -> str:
    local = os.path.join(self._local.name, f"{i:05d}-{os.path.basename(url)}")
    paths.resolve(url).copy(local)
    return local

  @staticmethod
  def _resolve(path: str) -> list[str]:
    p = paths.resolve(path)
    if not p.exists():
      raise FileNotFoundError(f"weights not found: {path}")
    if p.is_dir():
      names = [c.name for c in p.iterdir()]
      idx = [f for f in names if f.endswith(".safetensors.index.json")]
      if idx:
        return SafetensorsReader._resolve(f"{path.rstrip('/')}/{idx[0]}")
      files = sorted(f for f in names if f.endswith(".safetensors"))
      if len(files) != 1:
        raise FileNotFoundError(
            f"{path}: expected one *.safetensors file or a *.safetensors.index.json, found {files}")
      return [f"{path.rstrip('/')}/{files[0]}"]
    if path.endswith(".json"):
      return SafetensorsReader._index_files(path)
    return [path]

  @staticmethod
  def _index_files(path: str) -> list[str]:
    """The shard files a Hugging Face style index names, each checked to exist beside it."""
    try:
      weight_map = json.loads(paths.resolve(path).read_bytes())["weight_map"]
      names = set(weight_map.values())
      if not all(isinstance(n, str) and n for n in names):
        raise TypeError("its values must be file names")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      why = "no weight_map" if isinstance(e, KeyError) else _first_line(e)
      raise WeightsError(f"{path}: not a safetensors index ({why})") from None
    base = os.path.dirname(path)
    out = []
    for name in sorted(names):
      # Shards live beside their index; a name that climbs out of it is not a shard of it.
      if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise WeightsError(f"{path}: shard name {name!r} is not a file beside the index")
      if not paths.resolve(os.path.join(base, name)).is_file():
        raise WeightsError(f"{path}: names shard {name}, which is missing")
      out.append(os.path.join(base, name))
    return out

  def shape(self, key: str) -> tuple[int, ...]:
    return self._shapes[key]

  def __getitem__(self, key: str) -> np.ndarray:
    if key not in self._where:
      raise KeyError(key)
    file = self._where[key]
    try:
      with self._safe_open(file, framework="numpy") as h:
        return h.get_tensor(key)
    except self._errors as e:
      raise WeightsError(f"{file}: cannot read tensor {key} ({_first_line(e)})") from None

  def __iter__(self) -> Iterator[str]:
    return iter(self._where)

  def __len__(self) -> int:
    return len(self._where)


def check_keys(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]],
               *, source: str, ignore_unexpected=()) -> None:
  """Raise WeightsError naming missing, unexpected and misshapen keys (all of them)."""
  missing = sorted(set(expected) - set(found))
  unexpected = sorted(k for k in set(found) - set(expected)
                      if not any(k.startswith(p) for p in ignore_unexpected))
  misshapen = sorted(f"{k}: file {tuple(found[k])} vs model {tuple(expected[k])}"
                     for k in set(expected) & set(found)
                     if tuple(found[k]) != tuple(expected[k]))
  if missing or unexpected or misshapen:
    parts = []
    for name, items in (("missing", missing), ("unexpected", unexpected),
                        ("misshapen", misshapen)):
      if items:
        parts.append(f"{len(items)} {name}: " + ", ".join(items))
    raise WeightsError(f"{source} does not match the model config; " + "; ".join(parts))
