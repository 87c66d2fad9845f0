"""Read safetensors checkpoints (single file or sharded with an index) lazily and safely.

safetensors is data-only (no pickle). Tensors are read one at a time, so converting a large
checkpoint never holds two full copies in host memory.
"""
from __future__ import annotations

import json
import os
from typing import Iterator, Mapping

import numpy as np


class WeightsError(ValueError):
  """A checkpoint does not match the model: the message names every offending key."""


class SafetensorsReader(Mapping[str, np.ndarray]):
  """Mapping key -> numpy array over one `.safetensors` file, a directory, or an index json.

  A directory is searched for `model.safetensors.index.json`, then for a single
  `*.safetensors` file. bf16 tensors come back as `ml_dtypes.bfloat16` arrays.
  """

  def __init__(self, path: str):
    from safetensors import safe_open  # local import: optional dependency
    self._safe_open = safe_open
    self.path = path
    files = self._resolve(path)
    self._where: dict[str, str] = {}
    self._shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
      with safe_open(f, framework="numpy") as h:
        for k in h.keys():
          self._where[k] = f
          self._shapes[k] = tuple(h.get_slice(k).get_shape())

  @staticmethod
  def _resolve(path: str) -> list[str]:
    if not os.path.exists(path):
      raise FileNotFoundError(f"weights not found: {path}")
    if os.path.isdir(path):
      idx = [f for f in os.listdir(path) if f.endswith(".safetensors.index.json")]
      if idx:
        return SafetensorsReader._resolve(os.path.join(path, idx[0]))
      files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
      if len(files) != 1:
        raise FileNotFoundError(
            f"{path}: expected one *.safetensors file or a *.safetensors.index.json, found {files}")
      return [os.path.join(path, files[0])]
    if path.endswith(".json"):
      with open(path) as f:
        weight_map = json.load(f)["weight_map"]
      base = os.path.dirname(path)
      return sorted({os.path.join(base, v) for v in weight_map.values()})
    return [path]

  def shape(self, key: str) -> tuple[int, ...]:
    return self._shapes[key]

  def __getitem__(self, key: str) -> np.ndarray:
    if key not in self._where:
      raise KeyError(key)
    with self._safe_open(self._where[key], framework="numpy") as h:
      return h.get_tensor(key)

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
