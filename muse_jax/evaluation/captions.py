"""Caption sets to evaluate on, in a fixed order: caption i is the same in every run.

  captions = read(spec, fmt="auto", key="caption")

Formats (`fmt`, or chosen from `spec` when "auto"):
  text        a UTF-8 file, one caption per line; surrounding whitespace stripped, blank lines
              skipped; caption i is the i-th non-blank line (auto: any other file).
  coco        COCO captions JSON (captions_val2014.json: `annotations` of {image_id, id,
              caption}; auto: a .json file). One caption per image, the annotation with the
              smallest `id` of each image; images in increasing `image_id` (40,504 captions for
              val2014). Surrounding whitespace is stripped (COCO's captions carry some).
  tfrecord    TFRecord files of tf.train.Example with a bytes feature `key` (precompute shards
              store it as `caption`): a path, folder, glob or brace pattern (auto: names ending
              in .tfrecord, .tfrecord-* shard names, or a folder holding them); files in name
              order, records in file order. Read without TensorFlow (muse_jax.data.records).
  folder      images with sidecar captions (a.jpg -> a.txt), as the training `folder` source
              reads them (auto: any other folder); images in path order, those without a .txt
              skipped.
  webdataset  tar shards (auto: .tar, .tar.gz, .tgz, or a folder holding them), through the
              training webdataset reader: KEY.txt, or the `key` field of KEY.json; shards in
              name order, samples in shard order.
  parquet     parquet files (auto: .parquet, or a folder holding them) with a `key` column,
              through the training parquet reader; files in name order, rows in file order.
  tfds        a prepared TFDS dataset, `tfds:NAME[:SPLIT]` (auto: that prefix; with this format
              the prefix may be left out), read from `tfds_data_dir` (default: TFDS's own);
              NAME may carry a config and version (coco_captions/2017:1.1.0), SPLIT a slice
              (val[:1000]); a dataset with one split needs no SPLIT. `key` names the text
              feature, nested with / or . (captions/text for coco_captions); a sequence of
              texts gives its first. Files and records in stored order (no shuffling; TFDS
              fixes the order when it prepares the dataset). TensorFlow Datasets is imported
              only for this format.
Records without a caption are skipped; a damaged record or shard, or a source without any
caption, fails at start.
"""
from __future__ import annotations

import json
import os
import re

from muse_jax import paths
from muse_jax.data import records
from muse_jax.data.sources import files as F
from muse_jax.data.sources import tfds_captions

FORMATS = ("auto", "text", "coco", "tfrecord", "folder", "webdataset", "parquet", "tfds")
TFDS_PREFIX = "tfds:"
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrec")


def _is_tfrecord(name: str) -> bool:
  base = os.path.basename(name.rstrip("/"))
  return base.endswith(TFRECORD_SUFFIXES) or any(f"{s}-" in base for s in TFRECORD_SUFFIXES)


def detect(spec: str) -> str:
  """The format `spec` names (module docstring, "auto")."""
  if spec.startswith(TFDS_PREFIX):
    return "tfds"
  p = paths.resolve(spec) if not any(c in spec for c in "*?[{") else None
  if p is not None and p.is_dir():
    names = [c.name.lower() for c in p.iterdir()]
    if any(_is_tfrecord(n) for n in names):
      return "tfrecord"
    if any(n.endswith((".tar", ".tar.gz", ".tgz")) for n in names):
      return "webdataset"
    return "parquet" if any(n.endswith(".parquet") for n in names) else "folder"
  s = spec.lower()
  if s.endswith(".json"):
    return "coco"
  if s.endswith((".tar", ".tar.gz", ".tgz")):
    return "webdataset"
  if s.endswith(".parquet"):
    return "parquet"
  if _is_tfrecord(s):
    return "tfrecord"
  return "text"


def _text(spec: str) -> list[str]:
  if not paths.resolve(spec).is_file():
    raise FileNotFoundError(f"--captions={spec}: no such file")
  text = paths.resolve(spec).read_bytes().decode("utf-8")
  return [line.strip() for line in text.splitlines() if line.strip()]


def _coco(spec: str) -> list[str]:
  if not paths.resolve(spec).is_file():
    raise FileNotFoundError(f"--captions={spec}: no such file")
  try:
    data = json.loads(paths.resolve(spec).read_bytes())
    first: dict = {}
    for a in data["annotations"]:
      image, ident, caption = int(a["image_id"]), int(a["id"]), str(a["caption"]).strip()
      if caption and (image not in first or ident < first[image][0]):
        first[image] = (ident, caption)
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"--captions={spec} is not COCO captions JSON ({e.__class__.__name__}: "
                     f"{e}); give `annotations` of {{image_id, id, caption}}") from None
  return [first[i][1] for i in sorted(first)]


def _tfrecord(spec: str, key: str) -> list[str]:
  if paths.resolve(spec).is_dir():
    files = sorted(str(f) for f in paths.resolve(spec).iterdir() if _is_tfrecord(f.name))
  else:
    files = F.expand_paths(spec, (), "--captions")
  out = []
  for path in files:
    for i, raw in enumerate(records.read_tfrecord(path)):
      if isinstance(raw, records.CorruptRecord):
        raise ValueError(f"--captions={spec}: record {i} of {path} is damaged ({raw})")
      values = records.decode_features(raw).get(key)
      if values and isinstance(values[0], bytes):
        out.append(values[0].decode("utf-8").strip())
  return out


def parse_tfds(spec: str) -> tuple[str, str]:
  """(NAME, SPLIT or "") of `[tfds:]NAME[:SPLIT]`; a NAME's `:VERSION` (digits, dots and *)
  stays with NAME."""
  parts = spec.removeprefix(TFDS_PREFIX).split(":")
  name = parts.pop(0)
  if parts and re.fullmatch(r"[\d.*]+", parts[0]):
    name += ":" + parts.pop(0)
  if not name:
    raise ValueError(f"--captions={spec}: give tfds:NAME[:SPLIT]")
  return name, ":".join(parts)


def _raw_source(fmt: str, spec: str, key: str) -> list[str]:
  from muse_jax.data.raw_sources import FolderSource
  from muse_jax.data.sources.parquet import ParquetSource
  from muse_jax.data.sources.webdataset import WebDatasetSource
  if fmt == "folder":
    if not paths.resolve(spec).is_dir():
      raise FileNotFoundError(f"--captions={spec}: no such folder")
    source = FolderSource(spec)
  elif fmt == "webdataset":
    source = WebDatasetSource(spec, caption_key=key)
  else:
    source = ParquetSource(spec, caption_key=key)
  out = []
  for ex in source.raw_examples(0, 1):
    if ex.error == "corrupt_record":   # a damaged shard or record: the set would be partial
      raise ValueError(f"--captions={spec}: {ex.id} is damaged or unreadable")
    caption = ex.caption
    if isinstance(caption, bytes):
      caption = caption.decode("utf-8", errors="replace")
    if caption and caption.strip():
      out.append(caption.strip())
  return out


def read(spec: str, fmt: str = "auto", key: str = "caption",
         tfds_data_dir: str | None = None) -> list[str]:
  """The captions of `spec` in order (module docstring); refuses a set without any."""
  if fmt not in FORMATS:
    raise ValueError(f"--captions_format={fmt!r}: choose from {', '.join(FORMATS)}")
  fmt = detect(spec) if fmt == "auto" else fmt
  if fmt == "text":
    captions = _text(spec)
  elif fmt == "coco":
    captions = _coco(spec)
  elif fmt == "tfrecord":
    captions = _tfrecord(spec, key)
  elif fmt == "tfds":
    name, split = parse_tfds(spec)
    captions = tfds_captions.read(spec, name, split, key, tfds_data_dir)
  else:
    captions = _raw_source(fmt, spec, key)
  if not captions:
    hint = " (one per line; blank lines are skipped)" if fmt == "text" else ""
    raise ValueError(f"--captions={spec} holds no captions{hint}")
  return captions
