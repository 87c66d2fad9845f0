"""The grain reader: precomputed shards read by random access, shuffled globally, no TensorFlow.

Pipeline (grain's dataset API):
  MapDataset.source(ShardedRecords)     every record of the split, shards in file order
    .shuffle(seed)                      train: a permutation of all records of all shards
    .repeat()                           epochs forever; each epoch gets its own permutation
    [process_index::process_count]      disjoint per process: record k of the global stream
                                        goes to process k % process_count
    .map(decode)                        checks and parses a record; None if it is corrupt
    .to_iter_dataset(ReadOptions)       `data.grain_threads` threads read ahead
                                        `data.grain_prefetch` records (0 threads: read
                                        in the batching thread); Nones are dropped
    .batch(per-process batch)           padded numpy arrays of the stage's features
    ThreadPrefetchIterDataset           batches are formed while the step runs

The permutation is grain's index_shuffle (computed per index, no table), the record lookup
reads 16 bytes of a shard's offset index (record_index.py), so memory does not grow with the
dataset and resuming costs the same at record 10 and at record 10,000,000: the state is the
position in the process's stream (grain's `next_index`, corrupt records included), and
`set_state` just sets it. Eval: no shuffle, the same cycling, record-level sharding.

Corrupt records (failed framing CRC, truncated frame, not an Example, wrong sizes or token ids
>= codebook_size) are dropped by the map, counted exactly from the stream position (a batch
that advanced the position by more than its size skipped the difference), and each skip is
warned with the running count and the damaged shards seen so far.
"""
from __future__ import annotations

import collections
import logging
import sys
import threading
from typing import Sequence

import grain
import numpy as np

from muse_jax.data import record_index, records
from muse_jax.data.batch import BatchSource, Feature
from muse_jax.data.reader_common import PositionState, name_files, record_keys

log = logging.getLogger(__name__)


def shuffle_seed(seed: int) -> int:
  """The 32-bit seed grain's shuffle takes, derived from config.seed (any int)."""
  return int(np.random.SeedSequence([abs(int(seed)), int(seed < 0)]).generate_state(1)[0])


class PaddedBuffers:
  """Zero-padded float32 [batch, length, dim] text arrays, reused once nothing refers to them.

  A fresh array costs the kernel zeroing every page the valid rows touch (a 2 MB huge page per
  row at T5-XXL's width), several times the cost of the copy itself; so an array that only
  this pool still refers to (the loop has dropped the batch and any device transfer from it is
  done: jax keeps the host array alive until then) is refilled, zeroing just the rows its
  previous contents reached past the new lengths. At most `keep` arrays are kept."""

  def __init__(self, shape: tuple[int, ...], keep: int = 4):
    self.shape, self.keep = shape, keep
    self.arrays: list[np.ndarray] = []
    self.lengths: list[np.ndarray] = []

  def _free(self) -> int | None:
    for i in range(len(self.arrays)):
      if sys.getrefcount(self.arrays[i]) == 2:  # the list's slot and getrefcount's argument
        return i
    return None

  def fill(self, rows: Sequence[np.ndarray]) -> np.ndarray:
    """An array whose row i holds rows[i] ([n_i, dim]) followed by zeros."""
    i = self._free()
    if i is None:
      out, old = np.zeros(self.shape, np.float32), np.zeros(self.shape[0], np.int64)
      if len(self.arrays) < self.keep:
        self.arrays.append(out)
        self.lengths.append(old)
    else:
      out, old = self.arrays[i], self.lengths[i]
    for j, r in enumerate(rows):
      n = len(r)
      out[j, :n] = r
      if old[j] > n:
        out[j, n:old[j]] = 0
      old[j] = n
    return out


class GrainTokenSource(PositionState, BatchSource):
  """grain over indexed TFRecord shards (see the module docstring)."""

  reader = "grain"

  def __init__(self, files: Sequence[str], counts: Sequence[int], spec: records.RecordSpec,
               features: dict[str, Feature], *, batch: int, seed: int, shuffle: bool,
               process_index: int = 0, process_count: int = 1, threads: int = 1,
               prefetch: int = 256, build_index: bool = True):
    super().__init__(process_index, process_count)
    self.spec, self.features, self.keys = spec, features, record_keys(features)
    self.batch = int(batch)
    if build_index:
      record_index.ensure_indexes(files, counts)
    self.records = record_index.ShardedRecords(files, counts)
    if len(self.records) < process_count:
      raise ValueError(f"{len(self.records)} records cannot feed {process_count} processes")
    if "text" in self.keys:
      self._text = PaddedBuffers((self.batch,) + tuple(features["text"].shape))
    self._lock = threading.Lock()
    self._damaged: dict[str, dict[int, str]] = {}  # shard: {record: reason}
    ds = grain.MapDataset.source(self.records)
    if shuffle:
      ds = ds.shuffle(seed=shuffle_seed(seed))
    ds = ds.repeat()[process_index::process_count].map(self._decode)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(threads),
                                              prefetch_buffer_size=int(prefetch)))
    it = it.batch(self.batch, drop_remainder=True, batch_fn=self._collate)
    self.dataset = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=2)
    self._it = None

  def _decode(self, item: tuple[int, bytes | records.CorruptRecord]) -> dict | None:
    j, data = item
    try:
      if isinstance(data, records.CorruptRecord):
        raise data
      return records.decode_example(data, self.spec)
    except records.CorruptRecord as e:
      shard = self.records.files[self.records.locate(j)[0]]
      with self._lock:  # a record read again (next epoch, resume) is named once
        self._damaged.setdefault(shard, {})[j] = e.reason
      return None

  def _collate(self, rows: Sequence[dict]) -> dict[str, np.ndarray]:
    out = {}
    n = len(rows)
    for name, key in self.keys.items():
      if key == "text_emb":
        out[name] = self._text.fill([r["text_emb"] for r in rows])
      elif key == "text_len":
        out[name] = np.asarray([r["text_len"] for r in rows], np.int32)
      else:
        out[name] = np.stack([r[key] for r in rows])
    assert all(len(v) == n for v in out.values())
    return out

  def __next__(self):
    if self._it is None:
      self._it = iter(self.dataset)
      self._it.set_state({"next_index": self.position})
    batch = next(self._it)
    last = int(self._it.get_state()["next_index"])
    gaps = last - self.position - self.batch
    if gaps:
      self.corrupt += gaps
      with self._lock:
        named = name_files({f: ", ".join(f"{k} {v}" for k, v in sorted(
            collections.Counter(c.values()).items())) for f, c in self._damaged.items()})
      log.warning("skipped %d corrupt record(s); %d so far on this process; damaged shards: %s",
                  gaps, self.corrupt, named or "not named")
    self.position = last
    self.batches += 1
    return batch

  def set_state(self, state: dict) -> None:
    self._restore(state)
    if self._it is not None:
      self._it.close()
    self._it = None

  def close(self) -> None:
    if self._it is not None:
      self._it.close()
      self._it = None
