"""Captions of a prepared TFDS dataset, for caption sets (muse_jax/evaluation/captions.py).

TensorFlow Datasets (and so TensorFlow) is imported only when a set is read, through tf_import.py
(imported there too, as it brings JAX): they are the `tf` install extra, which the container
image leaves out by default, and reading any other caption format must not need them. Without
them, reading a set is a one-line error naming the extra (MissingTensorFlow, a ValueError like
every other caption-set error).
"""
from __future__ import annotations

import re

import numpy as np


def _text_at(tree, key: str):
  """The value at `key` (parts split at / or .) of nested records or features, or None."""
  for part in re.split(r"[/.]", key):
    try:
      tree = tree[part]
    except (KeyError, TypeError, IndexError, ValueError):
      return None
  return tree


def read(spec: str, name: str, split: str, key: str, data_dir: str | None) -> list[str]:
  """The non-empty texts at `key` of TFDS dataset `name`, split `split` ("": its only one),
  in stored order; `spec` (the --captions value) names it in errors, each one line."""
  from muse_jax.data import tf_import  # pylint: disable=g-import-not-at-top
  tfds = tf_import.tensorflow_datasets(f"--captions={spec}")  # only for this format
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
    splits = sorted(builder.info.splits.keys())
    if not split:
      if len(splits) != 1:
        raise ValueError(f"give a split, tfds:{name}:SPLIT, one of {', '.join(splits)}")
      split = splits[0]
    if builder.info.splits[split].num_examples == 0:
      raise ValueError(f"split {split!r} is empty")
    if _text_at(builder.info.features, key) is None:
      raise ValueError(f"no feature {key!r} (features: "
                       f"{', '.join(sorted(builder.info.features.keys()))}); set --caption_key")
    only = {}   # decode the caption feature alone, not the images
    node, parts = only, re.split(r"[/.]", key)
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = True
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders=tfds.decode.PartialDecoding(only),
                            read_config=tfds.ReadConfig(interleave_cycle_length=1))
    out = []
    for record in ds.as_numpy_iterator():
      value = np.asarray(_text_at(record, key)).reshape(-1)
      text = value[0] if value.size else b""
      text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
      if text.strip():
        out.append(text.strip())
  except Exception as e:  # noqa: BLE001 (TFDS and TensorFlow raise many kinds; one line each)
    first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
    where = f" in {data_dir}" if data_dir else ""
    raise ValueError(f"--captions={spec}{where}: {first}") from None
  return out
