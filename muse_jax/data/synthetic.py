"""Synthetic batches of the configured shapes: random tokens and random text embeddings.

numpy only (no TensorFlow), for tests, benchmarks and runs that isolate step time. Example i
of a split is a pure function of (seed, split, i), so the data does not depend on how many
processes share the batch, and resuming at a step reproduces the same examples.
"""
from __future__ import annotations

import numpy as np

from muse_jax.data.batch import Feature, IndexedRowsSource

_SPLIT_IDS = {"train": 0, "eval": 1}


def synthetic_example(feature_specs: dict[str, Feature], seed: int, split: str, index: int,
                      *, vocab: dict[str, int], text_key: str = "text",
                      length_key: str = "text_len") -> dict[str, np.ndarray]:
  """One example: ints uniform in [0, vocab[name]); floats N(0, 1); a valid text length in
  [1, S] with text positions past it zeroed (the T5 padding convention)."""
  rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
  out = {}
  for name, f in sorted(feature_specs.items()):
    if name == length_key:
      continue
    if np.issubdtype(np.dtype(f.dtype), np.integer):
      out[name] = rng.integers(0, vocab[name], size=f.shape, dtype=np.int32)
    else:
      out[name] = rng.standard_normal(f.shape, dtype=np.float32)
  if length_key in feature_specs:
    s = feature_specs[text_key].shape[0]
    n = int(rng.integers(1, s + 1))
    out[length_key] = np.int32(n)
    out[text_key][n:] = 0.0
  return out


class SyntheticSource(IndexedRowsSource):
  """Process-local rows of global batches; `eval` cycles over `num_batches` fixed batches."""

  def __init__(self, features: dict[str, Feature], vocab: dict[str, int], *, seed: int,
               split: str, global_batch: int, process_index: int = 0,
               process_count: int = 1, num_batches: int | None = None):
    super().__init__(global_batch=global_batch, process_index=process_index,
                     process_count=process_count, num_batches=num_batches)
    self.features, self.vocab, self.seed, self.split = features, vocab, seed, split

  def example(self, index):
    return synthetic_example(self.features, self.seed, self.split, index, vocab=self.vocab)
