"""The `shapes` raw source: procedural scenes (data/shapes/), drawn where preprocessing asks.

Numpy + PIL only, like the dataset itself: it imports where TensorFlow is not installed.
"""
from __future__ import annotations

import functools
import threading
from typing import Sequence

from muse_jax.data import workers
from muse_jax.data.preprocess import RawExample, shard_indices
from muse_jax.data.shapes import dataset as shapes


class ShapesSource:
  """The synthetic shapes dataset, one split, rendered at every resolution.

  Records are deferred: a scene is drawn only when the preprocessing worker that takes it
  calls `load`, so skipping records (a resumed precompute) draws nothing. With `processes` = 0
  the worker thread draws it; drawing is Python that holds the GIL, so `processes` > 0 draws
  scenes on that many spawned processes instead (data/workers.py), `chunk` scenes a task and
  `2 * processes` tasks ahead of the first scene asked for: the same records either way.
  """

  def __init__(self, split: str, num_examples: int, seed: int, resolutions: Sequence[int],
               max_count: int = shapes.MAX_COUNT, two_group_prob: float = 0.5,
               object_scale: float = 1.0, processes: int = 0, chunk: int = 64):
    if processes < 0:
      raise ValueError(f"data.shapes.processes={processes}: use 0 (preprocessing threads) or "
                       "more")
    self.dataset = shapes.ShapesDataset(split, num_examples, seed,
                                        tuple(int(r) for r in resolutions), max_count,
                                        two_group_prob, object_scale)
    self.processes, self.chunk = processes, chunk
    self._pool: workers.ProcessPool | None = None

  def raw_examples(self, process_index=0, process_count=1):
    indices = shard_indices(len(self.dataset), process_index, process_count)
    if self.processes:
      if self._pool is None:
        self._pool = workers.ProcessPool(self.processes)
      drawn = _DrawnScenes(self._pool, self.dataset, indices, self.chunk)
    for j, i in enumerate(indices):
      load = (functools.partial(drawn.load, j) if self.processes else
              functools.partial(self._load, i))
      yield RawExample(f"shapes-index-{i}", None, load=load)

  def _load(self, index: int) -> RawExample:
    return _draw_scenes(self.dataset, [index])[0]

  def close(self) -> None:
    """End the drawing processes (garbage collection and interpreter exit also do)."""
    if self._pool is not None:
      self._pool.close()
      self._pool = None


class _DrawnScenes:
  """The scenes `indices` of `dataset`, drawn by `pool` in chunks on first `load`."""

  def __init__(self, pool: workers.ProcessPool, dataset: shapes.ShapesDataset,
               indices: Sequence[int], chunk: int):
    self.pool, self.dataset, self.indices, self.chunk = pool, dataset, indices, chunk
    self.ahead = 2 * pool.processes
    self._lock = threading.Lock()
    self._chunks: dict[int, list] = {}  # chunk -> [Future, its records not yet loaded]
    self._next = 0
    self.lost = False

  def load(self, j: int) -> RawExample:
    """Record j of `indices` (thread-safe: the preprocessing threads call it at once)."""
    try:
      return self._drawn(j)
    except workers.BrokenProcessPool:  # a worker was killed: draw it here (workers.py)
      with self._lock:
        if not self.lost:
          self.lost = True
          workers.warn_workers_lost("the shapes source")
      return _draw_scenes(self.dataset, [self.indices[j]])[0]

  def _drawn(self, j: int) -> RawExample:
    k = j // self.chunk
    with self._lock:
      if k not in self._chunks:  # the first record asked for, or one a thread took late
        self._submit(k)
      self._next = max(self._next, k + 1)
      while self._next <= k + self.ahead:
        self._submit(self._next)
        self._next += 1
      entry = self._chunks[k]
      entry[1] -= 1
      if not entry[1]:
        del self._chunks[k]
    return entry[0].result()[j - k * self.chunk]

  def _submit(self, c: int) -> None:
    part = self.indices[c * self.chunk:(c + 1) * self.chunk]
    if part:
      self._chunks[c] = [self.pool.submit(_draw_scenes, self.dataset, part), len(part)]


def _draw_scenes(dataset: shapes.ShapesDataset, indices: Sequence[int]) -> list[RawExample]:
  return [RawExample(ex.id, ex.caption, images=ex.image)
          for ex in map(dataset.__getitem__, indices)]
