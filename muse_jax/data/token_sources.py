"""Choose the training input of a token stage from `config.data.source`.

`synthetic` needs only numpy; `precomputed` reads the shards written by
`python -m muse_jax.precompute` with the reader `data.reader` names (input_pipeline.py; the
default, grain, needs no TensorFlow).
"""
from __future__ import annotations

from muse_jax.data import input_pipeline
from muse_jax.data.synthetic import SyntheticSource


def make_source(stage, split: str, process_index: int, process_count: int):
  cfg = stage.config
  src = cfg.data.source
  if src == "synthetic":
    vocab = {k: cfg.model.codebook_size for k in stage.features()}  # for integer features
    return SyntheticSource(
        stage.features(), vocab, seed=cfg.seed, split=split,
        global_batch=cfg.train.batch_size, process_index=process_index,
        process_count=process_count,
        num_batches=cfg.train.eval_batches if split == "eval" else None)
  if src == "precomputed":
    return input_pipeline.make_token_source(stage, split, process_index, process_count)
  raise ValueError(f"config.data.source={src!r}; choose synthetic or precomputed")
