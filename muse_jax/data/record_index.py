"""Random access to the records of TFRecord shards, through an offset index beside each shard.

Index file: `<shard>.idx` (e.g. `train-00000-00003.tfrecord.idx`), n + 1 little-endian uint64:
record i's frame (length, length CRC, data, data CRC) spans bytes [off[i], off[i+1]) of the
shard, and off[n] is the shard's size. Precompute writes it with each shard. Shards written
before indexes existed get theirs on first use: `ensure_indexes` walks the record headers
(12 bytes read per record, not the data), checks the count against the manifest and writes
the index atomically beside the shard (a temporary name, then a rename; processes that build
the same index at once write the same bytes).

`ShardedRecords` is a grain random-access data source over a split: record j of the split is
record j - start(k) of shard k. A lookup reads 16 bytes of the shard's index and then the
frame, so host memory stays the same whatever the dataset's size (one offset per shard in
memory, open files cached per thread), and reading record 10,000,000 costs what reading
record 10 does. Paths go through etils.epath, so gs:// and other fsspec paths work.
"""
from __future__ import annotations

import collections
import logging
import struct
import threading
import time
from concurrent import futures
from typing import Sequence

import numpy as np
from etils import epath

from muse_jax import paths
from muse_jax.data import records

log = logging.getLogger(__name__)

INDEX_SUFFIX = ".idx"
_OPEN_FILES = 64  # per reading thread


def index_path(shard: str) -> str:
  return str(shard) + INDEX_SUFFIX


def offsets_from_sizes(sizes: Sequence[int]) -> np.ndarray:
  """[n + 1] uint64 offsets of frames of these sizes laid end to end."""
  return np.concatenate([[0], np.cumsum(np.asarray(sizes, np.uint64))]).astype("<u8")


def write_index(shard: str, offsets: np.ndarray) -> None:
  """Writes `<shard>.idx` atomically (paths.write_atomic: a local temporary file renamed, or
  one object upload)."""
  paths.write_atomic(index_path(shard), np.asarray(offsets, "<u8").tobytes())


def scan_offsets(shard: str) -> np.ndarray:
  """The offsets of every record in a TFRecord shard, from its length headers.

  Raises CorruptRecord('truncated') when the headers do not end exactly at the file's end."""
  path = epath.Path(shard)
  size = path.stat().length
  offsets = [0]
  with path.open("rb") as f:
    pos = 0
    while pos < size:
      f.seek(pos)
      header = f.read(8)
      if len(header) < 8:
        break
      (length,) = struct.unpack("<Q", header)
      pos += 16 + length
      offsets.append(pos)
  if offsets[-1] != size:
    raise records.CorruptRecord("truncated", f"{shard}: the last record's header points past "
                                f"the end ({offsets[-1]} > {size} bytes)")
  return np.asarray(offsets, "<u8")


def _index_ok(shard: str, count: int) -> bool:
  idx = epath.Path(index_path(shard))
  if not idx.exists():
    return False
  if idx.stat().length != 8 * (count + 1):
    return False
  with idx.open("rb") as f:
    f.seek(8 * count)
    (end,) = struct.unpack("<Q", f.read(8))
  return end == epath.Path(shard).stat().length


def ensure_indexes(files: Sequence[str], counts: Sequence[int], threads: int = 8) -> int:
  """Builds the missing or stale index of each shard; returns how many were built.

  A shard whose headers do not give the manifest's record count raises ValueError naming it:
  it was rewritten or damaged after the manifest (rerun the precompute that wrote it)."""
  todo = [(f, c) for f, c in zip(files, counts) if not _index_ok(f, c)]
  if not todo:
    return 0
  log.warning("building the record index of %d of %d shards (written before precompute wrote "
              "indexes); each is saved beside its shard as <shard>%s", len(todo), len(files),
              INDEX_SUFFIX)
  start = time.perf_counter()

  def build(item):
    shard, count = item
    try:
      offsets = scan_offsets(shard)
    except records.CorruptRecord as e:
      raise ValueError(f"cannot index {shard}: {e}; rerun the precompute that wrote it "
                       "(same config and --workdir) to redo that shard") from None
    if len(offsets) - 1 != count:
      raise ValueError(f"{shard} holds {len(offsets) - 1} records, its manifest {count}: rerun "
                       "the precompute that wrote it (same config and --workdir)")
    try:
      write_index(shard, offsets)
    except OSError as e:
      raise ValueError(f"cannot write the record index beside {shard} ({e}): make its "
                       "directory writable once, or set data.reader=tf") from None

  with futures.ThreadPoolExecutor(max(1, threads)) as pool:
    for i, _ in enumerate(pool.map(build, todo), 1):
      if i % 100 == 0 or i == len(todo):
        log.warning("record index: %d/%d shards (%.0f s)", i, len(todo),
                    time.perf_counter() - start)
  return len(todo)


class ShardedRecords:
  """grain RandomAccessDataSource of a split's framed records, concatenated in file order.

  `[j]` returns (j, record j's data), or (j, the `records.CorruptRecord`) for a frame that
  fails its checks, so the caller can count it and name its shard (`locate(j)`)."""

  def __init__(self, files: Sequence[str], counts: Sequence[int]):
    self.files = [str(f) for f in files]
    self.starts = np.concatenate([[0], np.cumsum(np.asarray(counts, np.int64))])
    self._local = threading.local()

  def __len__(self) -> int:
    return int(self.starts[-1])

  def __repr__(self) -> str:
    return f"ShardedRecords({len(self.files)} shards, {len(self)} records)"

  def __getstate__(self):  # for worker processes: open files stay behind
    return {"files": self.files, "starts": self.starts}

  def __setstate__(self, state):
    self.files, self.starts = state["files"], state["starts"]
    self._local = threading.local()

  def locate(self, j: int) -> tuple[int, int]:
    """(shard, record within the shard) of record j of the split."""
    k = int(np.searchsorted(self.starts, j, side="right")) - 1
    return k, int(j - self.starts[k])

  def _open(self, path: str):
    cache = getattr(self._local, "files", None)
    if cache is None:
      cache = self._local.files = collections.OrderedDict()
    f = cache.get(path)
    if f is None:
      f = cache[path] = epath.Path(path).open("rb")
      if len(cache) > _OPEN_FILES:
        cache.popitem(last=False)[1].close()
    else:
      cache.move_to_end(path)
    return f

  def frame(self, k: int, i: int) -> bytes:
    """The framed bytes of record i of shard k."""
    shard = self.files[k]
    idx = self._open(index_path(shard))
    idx.seek(8 * i)
    start, end = struct.unpack("<QQ", idx.read(16))
    f = self._open(shard)
    f.seek(start)
    return f.read(end - start)

  def __getitem__(self, j: int) -> tuple[int, bytes | records.CorruptRecord]:
    j = int(j)
    if not 0 <= j < len(self):
      raise IndexError(f"record {j} of {len(self)}")
    k, i = self.locate(j)
    try:
      return j, records.unframe(self.frame(k, i), f"{self.files[k]} record {i}")
    except records.CorruptRecord as e:
      return j, e
