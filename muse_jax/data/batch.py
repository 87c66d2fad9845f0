"""The batch contract between input and training: what a batch holds and how a source resumes.

A stage declares its batch format as `Feature`s; a `BatchSource` yields process-local numpy
batches of that format and saves/restores its position with every checkpoint, so a resumed run
sees exactly the examples it would have seen. `IndexedRowsSource` is the shared bookkeeping of
sources whose example i is a pure function of i (synthetic tokens, generated images).
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Iterator

import numpy as np


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
  """

  def __init__(self, *, global_batch: int, process_index: int = 0, process_count: int = 1,
               num_batches: int | None = None):
    if global_batch % process_count:
      raise ValueError(f"batch {global_batch} not divisible by {process_count} processes")
    self.global_batch, self.num_batches = global_batch, num_batches
    per = global_batch // process_count
    self.rows = range(process_index * per, (process_index + 1) * per)
    self.position = 0

  @abc.abstractmethod
  def example(self, index: int) -> dict[str, np.ndarray]:
    """Example `index` of the split, as {name: array}."""

  def __next__(self):
    b = self.position if self.num_batches is None else self.position % self.num_batches
    self.position += 1
    examples = [self.example(b * self.global_batch + r) for r in self.rows]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = int(state["position"])

