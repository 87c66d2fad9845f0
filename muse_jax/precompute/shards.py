"""Shard writing for precompute: one split of this process, in model batches, resumable.

`SplitWriter` runs the models on this process's slice of one split and writes its shards, one
index entry per finished shard and the process's summary of the split (file layout in
run.py).

Shard `k` of process `p` holds the kept examples among raw records
[k * examples_per_shard, (k+1) * examples_per_shard) of that process's slice, in source order.
Files are written to a temporary name and renamed, then the index entry is written; a rerun
(after a kill, or of a finished run) skips every shard whose file still matches its index entry
(size, then sha256; without running the models on it) and rewrites the rest, saying which
finished shards it redoes. The output is a pure function of the config: models and batches are
formed per shard (a batch never spans two shards), so a resumed or repaired run writes the same
bytes as an uninterrupted one.

Multi-process: all processes call the models in lockstep (global batch = batch_size rows,
batch_size / process_count per process); a process that has run out of work feeds padding rows
until every process is done. WORKDIR must be shared by the processes (process 0 reads every
index entry to write the manifest).
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import itertools
import os
import sys
import time
from typing import Iterator, Sequence

import jax
import ml_collections
import numpy as np
from etils import epath

from muse_jax import paths
from muse_jax.data import preprocess, raw_sources, record_index, records
from muse_jax.data.manifest import MANIFEST, read_json, shard_mismatch, write_json
from muse_jax.data.preprocess import SkipCounter
from muse_jax.precompute.models import Models
from muse_jax.progress import format_duration, progress_bar


def split_data(config, split: str):
  """`config.data` for one split, at the resolutions the tokenizers need."""
  data = ml_collections.ConfigDict(config.data.to_dict())
  res = [int(config.tokenizer.resolution)]
  if int(config.sr_tokenizer.resolution) > 0:
    res.append(int(config.sr_tokenizer.resolution))
  data.resolutions = tuple(sorted(set(res)))  # what the tokenizers need
  if data.source == "shapes":
    data.shapes.split = split
  elif data.source == "tfds":
    data.tfds.split = split
  return data


def shard_name(split: str, process: int, shard: int) -> str:
  return f"{split}-{process:05d}-{shard:05d}"


class ShardWriter:
  """Streams framed records into a temporary file; `finish()` renames it into place and
  writes its record offset index beside it (record_index.py: random access for training)."""

  def __init__(self, path: str):
    p = epath.Path(path)
    for stale in p.parent.glob(glob.escape(p.name) + ".tmp-*"):  # left by a killed run
      stale.unlink()
    # An object store has no rename (gcsfs copies, then deletes), but an object appears only
    # when its upload completes: on a URL the shard is written under its own name.
    self.path = path
    self.tmp = p if paths.is_url(path) else epath.Path(f"{path}.tmp-{os.getpid()}")
    self.file = self.tmp.open("wb")
    self.sha = hashlib.sha256()
    self.count = self.size = 0
    self.frame_sizes: list[int] = []

  def write(self, recs: list[bytes]) -> None:
    if recs:
      blob = records.frame_records(recs)
      self.file.write(blob)
      self.sha.update(blob)
      self.count += len(recs)
      self.size += len(blob)
      self.frame_sizes += records.frame_sizes(recs)

  def finish(self) -> str:
    self.file.flush()
    try:
      fd = self.file.fileno()
    except (OSError, ValueError):  # an object store's file: no descriptor, nothing to sync
      fd = None
    if fd is not None:  # local files: on disk before the rename
      os.fsync(fd)
    self.file.close()
    if self.tmp != epath.Path(self.path):
      self.tmp.replace(self.path)
    record_index.write_index(self.path, record_index.offsets_from_sizes(self.frame_sizes))
    return self.sha.hexdigest()


@dataclasses.dataclass
class _Shard:
  index: int
  counter: SkipCounter
  examples: Iterator[dict]
  writer: ShardWriter | None = None


class _Progress:
  def __init__(self, split: str, total: int | None, every: int, stream, enabled: bool):
    self.split, self.total, self.every = split, total, max(int(every), 1)
    self.stream, self.enabled = stream, enabled
    self.start = time.perf_counter()
    self.done = self.written = self.skipped = self.batches = 0
    self.resumed = 0
    self._last = None

  def rate(self, live: SkipCounter | None = None) -> float:
    done = self.done + (live.seen if live is not None else 0)
    return (done - self.resumed) / max(time.perf_counter() - self.start, 1e-9)

  def update(self, batches: int = 0, force: bool = False,
             live: SkipCounter | None = None) -> None:
    """A line every `every` model batches: progress, examples/s (raw records), ETA."""
    self.batches += batches
    if not self.enabled or not (force or (batches and self.batches % self.every == 0)):
      return
    done = self.done + (live.seen if live is not None else 0)
    written = self.written + (live.kept if live is not None else 0)
    skipped = self.skipped + (sum(live.skipped.values()) if live is not None else 0)
    if force and self._last == (done, written):
      return  # nothing new since the last line
    self._last = (done, written)
    rate = self.rate(live)
    if self.total:
      eta = (self.total - done) / rate if rate > 0 else float("inf")
      head = f"{progress_bar(done, self.total)} ETA {format_duration(eta)}"
    else:
      head = f"{done} records"
    print(f"precompute {self.split}: {head}, {rate:.1f} examples/s, written {written}, "
          f"skipped {skipped}", file=self.stream, flush=True)


def _expected_records(data, process_index: int, process_count: int) -> int | None:
  if data.source == "shapes":
    n = data.shapes.num_train if data.shapes.split == "train" else data.shapes.num_heldout
    return len(range(process_index, int(n), process_count))
  return None


def _allgather(values: Sequence[int]) -> np.ndarray:
  """[process_count, len(values)] of every process's values (no-op on one process)."""
  arr = np.asarray(values, np.int64)[None]
  if jax.process_count() == 1:
    return arr
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(arr[0])).reshape(jax.process_count(), -1)


class SplitWriter:
  """Writes this process's shards of one split, calling the models in lockstep."""

  def __init__(self, config, workdir: str, split: str, models: Models, spec: records.RecordSpec,
               stream=None):
    self.config, self.split, self.models, self.spec = config, split, models, spec
    self.pi, self.pc = jax.process_index(), jax.process_count()
    self.workdir, self.stream = workdir, stream or sys.stdout
    self.shard_dir = os.path.join(workdir, "shards")
    self.index_dir = os.path.join(workdir, "index")
    self.per_shard = int(config.precompute.examples_per_shard)
    self.batch = int(config.precompute.batch_size) // self.pc
    self.data = split_data(config, split)
    self.options = preprocess.options_from_config(self.data)
    self.summary_path = os.path.join(self.index_dir, f"{split}-{self.pi:05d}.json")
    self.progress = _Progress(split, _expected_records(self.data, self.pi, self.pc),
                              config.precompute.log_every, self.stream, self.pi == 0)
    self._intact: set[int] = set()  # shards whose file was checked against their entry

  def _entry_path(self, k: int) -> str:
    return os.path.join(self.index_dir, shard_name(self.split, self.pi, k) + ".json")

  def _shard_path(self, k: int) -> str:
    return os.path.join(self.shard_dir, shard_name(self.split, self.pi, k) + ".tfrecord")

  def _finished(self, k: int) -> dict | None:
    """Shard k's index entry if its file matches it, else None: compute it. A mismatching
    shard loses its entry, and the summary and manifest that vouch for it, before it is redone,
    so a kill meanwhile leaves it unfinished and nothing reads the output until a rerun ends."""
    entry_path = self._entry_path(k)
    if not epath.Path(entry_path).exists():
      return None
    entry = read_json(entry_path)
    problem = None if k in self._intact else shard_mismatch(self._shard_path(k), entry)
    if problem is None:
      self._intact.add(k)
      return entry
    print(f"precompute {self.split}: {os.path.relpath(self._shard_path(k), self.workdir)} "
          f"{problem}; recomputing it", file=self.stream, flush=True)
    for path in (entry_path, self.summary_path, os.path.join(self.workdir, MANIFEST)):
      epath.Path(path).unlink(missing_ok=True)
    return None

  def _shards(self) -> Iterator[_Shard | dict]:
    """Shards to compute (`_Shard`), or the index entry (dict) of an already finished one."""
    raw = raw_sources.make_source(self.data).raw_examples(self.pi, self.pc)
    workers = int(self.data.num_workers)
    for k in itertools.count():
      entry = self._finished(k)
      if entry is not None:
        entry_path = self._entry_path(k)
        consumed = sum(1 for _ in itertools.islice(raw, self.per_shard))
        if consumed != entry["seen"]:
          raise RuntimeError(f"{entry_path} says {entry['seen']} raw records but the source now "
                             f"gives {consumed}: the source changed; use a new workdir")
        yield entry
        if consumed < self.per_shard:
          return
        continue
      chunk = list(itertools.islice(raw, 1))
      if not chunk:
        return
      counter = SkipCounter()
      examples = preprocess.preprocess_stream(
          itertools.chain(chunk, itertools.islice(raw, self.per_shard - 1)), self.options,
          counter, num_workers=workers, prefetch=max(4 * workers, 2 * self.batch))
      yield _Shard(k, counter, examples)
      if counter.seen < self.per_shard:
        return

  def _next_batch(self, shard: _Shard) -> list[dict]:
    return list(itertools.islice(shard.examples, self.batch))

  def _model_batch(self, examples: list[dict]) -> dict[str, np.ndarray]:
    """Run the models on `examples` padded to the per-process batch."""
    pad = self.batch - len(examples)
    res_lo, res_hi = self.models.resolution, self.models.sr_resolution

    def images(res):
      arr = np.zeros((self.batch, res, res, 3), np.uint8)
      for i, ex in enumerate(examples):
        arr[i] = ex["image"][res]
      return arr

    captions = [ex["caption"] for ex in examples] + [""] * pad
    return self.models.run(images(res_lo), images(res_hi) if res_hi else None, captions)

  def _encode(self, examples: list[dict], out: dict[str, np.ndarray]) -> list[bytes]:
    recs = []
    for i, ex in enumerate(examples):
      n = int(out["text_len"][i])
      rec = {"id": ex["id"], "caption": ex["caption"], "tokens_lo": out["tokens_lo"][i],
             "text_emb": out["text_emb"][i, :n], "text_len": n}
      if "tokens_hi" in out:
        rec["tokens_hi"] = out["tokens_hi"][i]
      recs.append(records.encode_example(rec, self.spec))
    return recs

  def _finish_shard(self, shard: _Shard) -> dict:
    c = shard.counter
    sha = shard.writer.finish()
    entry = {"file": os.path.basename(shard.writer.path), "process": self.pi,
             "shard": shard.index, "records": shard.writer.count, "seen": c.seen,
             "bytes": shard.writer.size,
             "skipped": dict(sorted(c.skipped.items())), "notes": dict(sorted(c.notes.items())),
             "skipped_ids": c.skipped_ids(), "sha256": sha}
    if entry["records"] != c.kept:
      raise RuntimeError(f"shard {entry['file']}: wrote {entry['records']} records but "
                         f"{c.kept} were kept")
    write_json(self._entry_path(shard.index), entry)
    return entry

  def run(self) -> dict:
    """Writes the missing shards of this process; returns its summary for the split."""
    epath.Path(self.shard_dir).mkdir(parents=True, exist_ok=True)
    epath.Path(self.index_dir).mkdir(parents=True, exist_ok=True)
    done_already = epath.Path(self.summary_path).exists() and all(  # and every shard intact
        self._finished(e["shard"]) is not None for e in read_json(self.summary_path)["shards"])
    shards = iter(()) if done_already else self._shards()
    entries: list[dict] = []
    current: _Shard | None = None
    exhausted = done_already
    prog = self.progress
    while True:
      examples: list[dict] = []
      while not exhausted and not examples:
        if current is None:
          item = next(shards, None)
          if item is None:
            exhausted = True
            break
          if isinstance(item, dict):
            entries.append(item)
            prog.done += item["seen"]
            prog.resumed += item["seen"]
            prog.written += item["records"]
            prog.skipped += item["seen"] - item["records"]
            continue
          current = item
          current.writer = ShardWriter(self._shard_path(current.index))
        examples = self._next_batch(current)
        if len(examples) < self.batch:  # the shard is used up: finish it after this batch
          break
      status = _allgather([len(examples), int(exhausted)])
      if status[:, 0].any():  # every process calls the models, with padding if it has none
        out = self._model_batch(examples)
        if examples:
          current.writer.write(self._encode(examples, out))
      if current is not None and len(examples) < self.batch:
        entries.append(self._finish_shard(current))
        prog.done += current.counter.seen
        prog.written += current.counter.kept
        prog.skipped += current.counter.seen - current.counter.kept
        current = None
      prog.update(batches=1 if status[:, 0].any() else 0,
                  live=current.counter if current is not None else None)
      if status[:, 1].all() and not status[:, 0].any():
        break
    if done_already:
      summary = read_json(self.summary_path)
    else:
      summary = {"split": self.split, "process": self.pi,
                 "shards": sorted(entries, key=lambda e: e["shard"])}
      write_json(self.summary_path, summary)
    prog.update(force=True)
    return summary

