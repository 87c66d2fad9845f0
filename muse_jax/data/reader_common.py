"""What every precomputed-shard reader shares: feature checks, files, the resumable position.

`PositionState` is the resumable part of a reader: its position in the process's infinite,
deterministic record stream (records consumed, corrupt ones included), the batches drawn and
the corrupt records skipped. `get_state` gathers every process's position (a collective: call
it on all processes, as the loop's checkpoint does); `set_state` restores this process's.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from muse_jax.data import records
from muse_jax.data.batch import Feature
from muse_jax.data.manifest import read_manifest

log = logging.getLogger(__name__)


def record_keys(features: dict[str, Feature]) -> dict[str, str]:
  """Feature name -> record key: `tokens` is the high-res tokens when `tokens_lo` is fed too."""
  out = {}
  for name in features:
    if name == "tokens":
      out[name] = "tokens_hi" if "tokens_lo" in features else "tokens_lo"
    elif name == "tokens_lo":
      out[name] = "tokens_lo"
    elif name == "text":
      out[name] = "text_emb"
    elif name == "text_len":
      out[name] = "text_len"
    else:
      raise ValueError(f"feature {name!r} is not in precomputed records (they hold tokens_lo, "
                       "tokens_hi, text_emb, text_len)")
  return out


def check_features(features: dict[str, Feature], spec: records.RecordSpec, where: str) -> None:
  """Raise with what to change when the stage's features cannot come from these records."""
  for name, key in record_keys(features).items():
    f = features[name]
    if key in ("tokens_lo", "tokens_hi"):
      grid = spec.grid_lo if key == "tokens_lo" else spec.grid_hi
      if grid == 0:
        raise ValueError(f"{where} has no high-res tokens (precompute ran without "
                         "sr_tokenizer): this stage needs them")
      if f.shape != (grid * grid,):
        side = int(round(np.sqrt(np.prod(f.shape))))
        raise ValueError(f"{where} holds {grid}x{grid} {key} but the model expects "
                         f"{side}x{side}: set model.grid_size={grid} (or precompute at the "
                         "matching resolution)")
    elif key == "text_emb":
      length, dim = f.shape
      if dim != spec.text_dim:
        raise ValueError(f"{where} holds {spec.text_dim}-d text embeddings but "
                         f"model.text_dim={dim}: set model.text_dim={spec.text_dim}")
      if length < spec.text_max_length:
        raise ValueError(f"{where} holds up to {spec.text_max_length} text tokens but "
                         f"model.text_length={length}: set model.text_length >= "
                         f"{spec.text_max_length}")


def codebook_check(spec: records.RecordSpec, codebook_size: int, where: str) -> None:
  if spec.codebook_size > codebook_size:
    raise ValueError(f"{where} has token ids up to {spec.codebook_size - 1} but "
                     f"model.codebook_size={codebook_size}: set it to >= {spec.codebook_size}")


def process_files(files: Sequence[str], counts: Sequence[int], process_index: int,
                  process_count: int) -> tuple[list[str], int, bool]:
  """(this process's files, its records per epoch, record-level sharding?)."""
  if len(files) >= process_count:
    return (list(files[process_index::process_count]),
            int(sum(counts[process_index::process_count])), False)
  total = int(sum(counts))
  return list(files), len(range(process_index, total, process_count)), True


class PositionState:
  """The resumable part shared by both readers: stream position, batches, corrupt count."""

  reader = ""

  def __init__(self, process_index: int, process_count: int):
    self.pi, self.pc = process_index, process_count
    self.position = 0
    self.batches = 0
    self.corrupt = 0

  def get_state(self) -> dict:
    mine = [self.position >> 31, self.position & 0x7FFFFFFF, self.corrupt]
    if self.pc > 1:
      from jax.experimental import multihost_utils
      rows = np.asarray(multihost_utils.process_allgather(np.asarray(mine, np.int32)))
      rows = rows.reshape(self.pc, 3)
    else:
      rows = np.asarray([mine])
    return {"reader": self.reader, "batches": self.batches,
            "positions": [int(h) << 31 | int(l) for h, l, _ in rows],
            "corrupt": [int(c) for c in rows[:, 2]]}

  def _restore(self, state: dict) -> None:
    if "positions" in state:
      positions = list(state["positions"])
      if len(positions) != self.pc:
        log.warning("the input state was saved by %d processes, this run has %d: the data "
                    "order cannot continue exactly; starting at the same number of batches",
                    len(positions), self.pc)
        self.position = int(state.get("batches", 0)) * self.batch
      else:
        self.position = int(positions[self.pi])
      corrupt = state.get("corrupt", [0] * self.pc)
      self.corrupt = int(corrupt[self.pi]) if len(corrupt) == self.pc else 0
      if state.get("reader") and state["reader"] != self.reader:
        log.warning("the input state comes from the %r reader, this run uses %r: the order "
                    "of examples differs from the saved run", state["reader"], self.reader)
    else:  # {"position": n}: every process at n (the loop's eval restart uses 0)
      self.position, self.corrupt = int(state["position"]), 0
    self.batches = int(state.get("batches", 0))


def name_files(why: dict[str, str], most: int = 5) -> str:
  """'a.tfrecord (reason), b.tfrecord (reason)', the first `most`, then how many more."""
  parts = [f"{f} ({r})" if r else f for f, r in list(why.items())[:most]]
  if len(why) > most:
    parts.append(f"and {len(why) - most} more")
  return ", ".join(parts)


def split_files(path: str, split: str) -> tuple[list[str], list[int], records.RecordSpec]:
  """(files, records per file, spec) of `split` in the precompute output at `path`."""
  manifest = read_manifest(path)
  if split not in manifest["splits"]:
    raise ValueError(f"{path} has no split {split!r} (it has {sorted(manifest['splits'])}); "
                     "set data.train_split / data.eval_split")
  s = manifest["splits"][split]
  shard_dir = os.path.join(path, manifest.get("shard_dir", "shards"))
  files = [os.path.join(shard_dir, f) for f in s["files"]]
  counts = [int(c) for c in s["records_per_file"]]
  nonempty = [(f, c) for f, c in zip(files, counts) if c > 0]
  if not nonempty:
    raise ValueError(f"split {split!r} in {path} has no records")
  return ([f for f, _ in nonempty], [c for _, c in nonempty],
          records.RecordSpec.from_json(manifest["spec"]))


