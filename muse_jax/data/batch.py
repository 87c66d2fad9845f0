"""The batch contract between input and training: what a batch holds and how a source resumes.

A stage declares its batch format as `Feature`s; a `BatchSource` yields process-local numpy
batches of that format and saves/restores its position with every checkpoint, so a resumed run
sees exactly the examples it would have seen. `IndexedRowsSource` is the shared bookkeeping of
sources whose example i is a pure function of i (synthetic tokens, generated images); with
`num_workers` it draws the next batches in worker processes (data/workers.py).
"""
from __future__ import annotations

import abc
import collections
import copy
import dataclasses
from typing import Any, Iterator

import numpy as np

from muse_jax.data.workers import BrokenProcessPool, ProcessPool, warn_workers_lost


@dataclasses.dataclass(frozen=True)
class Feature:
  """One batch entry: per-example shape, dtype and logical axes (batch axis first)."""
  shape: tuple[int, ...]
  dtype: Any
  axes: tuple[str | None, ...]


class BatchSource(abc.ABC):
  """A resumable iterator of process-local numpy batches.

  `get_state()` returns a JSON-serialisable position saved with each checkpoint;
  `set_state()` restores it so a resumed run sees exactly the examples it would have seen.
  """

  @abc.abstractmethod
  def __next__(self) -> dict[str, np.ndarray]:
    ...

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  @abc.abstractmethod
  def get_state(self) -> dict:
    ...

  @abc.abstractmethod
  def set_state(self, state: dict) -> None:
    ...


class IndexedRowsSource(BatchSource):
  """Process-local rows of deterministic global batches.

  Global batch b holds examples b * global_batch ... (b + 1) * global_batch - 1; this process
  draws its contiguous share of rows. Subclasses define `example(index)` (a pure function of
  the index, so the data does not depend on how many processes share the batch). The position
  is the number of batches drawn; with `num_batches` (eval) it cycles over that many batches.

  `num_workers` > 0 draws batches on that many spawned processes, `prefetch` batches ahead
  (default 2 per worker), each the same bytes as the serial path's. The source is pickled to
  the workers, so a subclass keeps only small picklable fields. `set_state` discards the
  batches drawn ahead; `close()` ends the workers (or garbage collection, or interpreter exit).
  """

  def __init__(self, *, global_batch: int, process_index: int = 0, process_count: int = 1,
               num_batches: int | None = None, num_workers: int = 0, prefetch: int = 0):
    if global_batch % process_count:
      raise ValueError(f"batch {global_batch} not divisible by {process_count} processes")
    if num_workers < 0:
      raise ValueError(f"num_workers={num_workers}: use 0 (draw in this thread) or more")
    self.global_batch, self.num_batches = global_batch, num_batches
    per = global_batch // process_count
    self.rows = range(process_index * per, (process_index + 1) * per)
    self.position = 0
    self.num_workers, self.prefetch = num_workers, prefetch or 2 * num_workers
    self._pool: ProcessPool | None = None
    self._work: IndexedRowsSource | None = None
    self._ahead: collections.deque = collections.deque()  # (position, Future), in order

  @abc.abstractmethod
  def example(self, index: int) -> dict[str, np.ndarray]:
    """Example `index` of the split, as {name: array}."""

  def batch(self, position: int) -> dict[str, np.ndarray]:
    """This process's rows of batch number `position` (counting from 0)."""
    b = position if self.num_batches is None else position % self.num_batches
    examples = [self.example(b * self.global_batch + r) for r in self.rows]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}

  def __next__(self):
    position = self.position
    self.position += 1
    if not self.num_workers:
      return self.batch(position)
    try:
      return self._drawn_ahead(position)
    except BrokenProcessPool:
      # A worker was killed (a preemption's SIGTERM to every process of the job, the OOM
      # killer). Batches are pure functions of their position: this thread draws them now.
      warn_workers_lost(type(self).__name__)
      self.close()
      self.num_workers = 0
      return self.batch(position)

  def _drawn_ahead(self, position: int) -> dict[str, np.ndarray]:
    if self._pool is None:
      self._pool = ProcessPool(self.num_workers)
      # What the workers get: this source without its pool (work items referring to the
      # source itself would keep it alive, and the pool with it, until they are done).
      self._work = copy.copy(self)
    ahead = self._ahead[-1][0] + 1 if self._ahead else position
    while ahead < position + self.prefetch:
      self._ahead.append((ahead, self._pool.submit(_draw_batch, self._work, ahead)))
      ahead += 1
    drawn, future = self._ahead.popleft()
    assert drawn == position, (drawn, position)
    return future.result()

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = int(state["position"])
    self._drop_ahead()

  def _drop_ahead(self) -> None:
    while self._ahead:
      self._ahead.popleft()[1].cancel()

  def close(self) -> None:
    """End the worker processes (a later batch starts new ones)."""
    self._drop_ahead()
    if self._pool is not None:
      self._pool.close()
      self._pool = self._work = None

  def __getstate__(self):
    state = dict(self.__dict__)
    state.update(_pool=None, _work=None, _ahead=collections.deque(), num_workers=0)
    return state


def _draw_batch(source: IndexedRowsSource, position: int) -> dict[str, np.ndarray]:
  return source.batch(position)
