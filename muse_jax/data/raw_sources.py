"""Raw image-caption sources, chosen by config, and the uniform example iterator.

  shapes    the synthetic shapes dataset (shapes/dataset.py), rendered natively at each
            resolution, optionally in worker processes (sources/shapes.py)
  tfds      a TFDS dataset by name and data_dir; image and caption feature keys configurable
            ('/' separates nested keys; a list of captions gives its first)
  tfrecord  TFRecord files of tf.train.Example (a glob; bytes features, keys configurable)
  folder    a folder of images with captions from a JSONL manifest (one {"file": ..,
            "caption": ..} object per line, paths relative to the folder) or from sidecar .txt
            files (a.jpg -> a.txt)
  webdataset  tar shards as img2dataset writes them (KEY.jpg + KEY.txt / KEY.json), given as
            a path, folder, glob, brace pattern or list (sources/webdataset.py)
  parquet   parquet files with a caption column and an image column of bytes or paths
            (sources/parquet.py)

Paths are read through etils.epath, so gs:// and other filesystems work where epath can
reach them.

`iterate_examples(config.data, process_index, process_count)` yields
{'id': str, 'image': {resolution: uint8 HxWx3}, 'caption': str} for this process's disjoint
slice of the source, counting every skipped record in a `SkipCounter` (see preprocess.py).

Sharding: shapes, folder, and TFRecord, WebDataset and parquet files when there are fewer
files than processes, are split by record index (i::process_count); those files are split by
file when there are at least as many files as processes; TFDS uses `tfds.even_splits`. In
every case the slices are disjoint and together cover the source.

TensorFlow is imported only when a tfds or tfrecord source is built (tf_import.py: without the
`tf` install extra, building one is a one-line error), so the other sources work where
TensorFlow is not installed.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator, Protocol, Sequence

import numpy as np

from muse_jax.data import preprocess
from muse_jax.data.preprocess import RawExample, SkipCounter
from muse_jax.data.shapes import dataset as shapes
from muse_jax.data.sources import files as paths
from muse_jax.data.sources.parquet import ParquetSource
from muse_jax.data.sources.shapes import ShapesSource
from muse_jax.data.sources.webdataset import WebDatasetSource

SOURCES = ("shapes", "tfds", "tfrecord", "folder", "webdataset", "parquet")


class Source(Protocol):

  def raw_examples(self, process_index: int = 0,
                   process_count: int = 1) -> Iterator[RawExample]:
    ...


def _check_shard(process_index: int, process_count: int) -> None:
  preprocess.shard_indices(0, process_index, process_count)


def _get_path(features: Any, key: str) -> Any:
  """features['a']['b'] for key 'a/b' (dicts or TFDS FeaturesDicts); None if absent."""
  value = features
  for part in key.split("/"):
    try:
      value = value[part]
    except (KeyError, TypeError, IndexError, ValueError):
      return None
  return value


def _first_text(value: Any) -> bytes | str | None:
  """A caption value: bytes/str, or the first of a list/array of them."""
  if value is None:
    return None
  if isinstance(value, np.ndarray):
    if value.ndim == 0:
      return value.item()
    return value.reshape(-1)[0] if value.size else None
  if isinstance(value, (list, tuple)):
    return value[0] if value else None
  return value


class TFDSSource:
  """A TFDS dataset read from `data_dir` (images are kept encoded and decoded by PIL)."""

  def __init__(self, name: str, data_dir: str | None, split: str = "train",
               image_key: str = "image", caption_key: str = "caption", id_key: str = ""):
    if not name:
      raise ValueError("data.tfds.name is empty: set it to a TFDS dataset name, e.g. 'coco'")
    self.name, self.data_dir, self.split = name, data_dir or None, split
    self.image_key, self.caption_key, self.id_key = image_key, caption_key, id_key
    # A missing tf extra fails here, when the source is built. (Imported here: tf_import's
    # ConfigError brings JAX, which the other sources do not need.)
    from muse_jax.data import tf_import  # pylint: disable=g-import-not-at-top
    self.tfds = tf_import.tensorflow_datasets("data.source=tfds")
    self.tf = tf_import.tensorflow("data.source=tfds")

  def raw_examples(self, process_index=0, process_count=1):
    _check_shard(process_index, process_count)
    tf, tfds = self.tf, self.tfds
    builder = tfds.builder(self.name, data_dir=self.data_dir)
    features = builder.info.features
    image_feature = _get_path(features, self.image_key)
    if image_feature is None:
      raise ValueError(f"TFDS {self.name} has no feature {self.image_key!r} "
                       f"(has {sorted(features.keys())}); set data.tfds.image_key")
    if _get_path(features, self.caption_key) is None:
      raise ValueError(f"TFDS {self.name} has no feature {self.caption_key!r} "
                       f"(has {sorted(features.keys())}); set data.tfds.caption_key")
    decoders = None
    if isinstance(image_feature, tfds.features.Image):
      decoders = {}
      node = decoders
      parts = self.image_key.split("/")
      for part in parts[:-1]:
        node = node.setdefault(part, {})
      node[parts[-1]] = tfds.decode.SkipDecoding()
    split = self.split
    if process_count > 1:
      split = tfds.even_splits(self.split, n=process_count, drop_remainder=False)[process_index]
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                            read_config=tfds.ReadConfig(add_tfds_id=True))
    it = iter(ds.as_numpy_iterator())
    index = 0
    while True:
      try:
        record = next(it)
      except StopIteration:
        return
      except tf.errors.OpError:
        # A corrupt shard ends the iterator; count it and stop.
        yield RawExample(f"{self.name}:{split}:{index}", None, error="corrupt_record")
        return
      index += 1
      ident = _get_path(record, self.id_key) if self.id_key else record.get("tfds_id")
      ident = ident.decode() if isinstance(ident, bytes) else str(ident)
      image = _get_path(record, self.image_key)
      caption = _first_text(_get_path(record, self.caption_key))
      if image is None:
        yield RawExample(ident, caption, error="missing_image")
      elif isinstance(image, (bytes, np.bytes_)):
        yield RawExample(ident, caption, image_bytes=bytes(image))
      else:
        yield RawExample(ident, caption, image_array=np.asarray(image))


class TFRecordSource:
  """TFRecord files (a glob) of tf.train.Example with encoded image and caption bytes."""

  def __init__(self, pattern: str, image_key: str = "image", caption_key: str = "caption",
               id_key: str = "", compression: str = ""):
    if not pattern:
      raise ValueError("data.tfrecord.pattern is empty: set it to a glob of TFRecord files")
    self.pattern, self.image_key, self.caption_key = pattern, image_key, caption_key
    self.id_key, self.compression = id_key, compression
    from muse_jax.data import tf_import  # pylint: disable=g-import-not-at-top
    self.tf = tf_import.tensorflow("data.source=tfrecord")  # as in TFDSSource

  def files(self) -> list[str]:
    files = sorted(self.tf.io.gfile.glob(self.pattern))
    if not files:
      raise FileNotFoundError(f"no files match data.tfrecord.pattern={self.pattern!r}")
    return files

  def _parse(self, name: str, raw: bytes) -> RawExample:
    try:
      example = self.tf.train.Example.FromString(raw)
    except Exception:  # noqa: BLE001 -- protobuf DecodeError
      return RawExample(name, None, error="corrupt_record")
    feats = example.features.feature

    def first_bytes(key):
      if key not in feats:
        return None
      values = feats[key].bytes_list.value
      return values[0] if values else None

    ident = first_bytes(self.id_key) if self.id_key else None
    ident = ident.decode("utf-8", errors="replace") if ident else name
    caption = first_bytes(self.caption_key)
    image = first_bytes(self.image_key)
    if image is None:
      return RawExample(ident, caption, error="missing_image")
    return RawExample(ident, caption, image_bytes=image)

  def raw_examples(self, process_index=0, process_count=1):
    _check_shard(process_index, process_count)
    tf = self.tf
    files = self.files()
    by_file = len(files) >= process_count
    if by_file:
      files = files[process_index::process_count]
    global_index = 0
    for path in files:
      base = os.path.basename(path)
      ds = tf.data.TFRecordDataset(path, compression_type=self.compression or None)
      it = iter(ds.as_numpy_iterator())
      index = 0
      while True:
        try:
          raw = next(it)
        except StopIteration:
          break
        except tf.errors.OpError:
          # Truncated or corrupt file: count it once and go on with the next file.
          if by_file or global_index % process_count == process_index:
            yield RawExample(f"{base}:{index}", None, error="corrupt_record")
          global_index += 1
          break
        mine = by_file or global_index % process_count == process_index
        global_index += 1
        if mine:
          yield self._parse(f"{base}:{index}", raw)
        index += 1


class FolderSource:
  """Images under `root`; captions from a JSONL `manifest` or from sidecar .txt files."""

  def __init__(self, root: str, manifest: str = "", image_key: str = "file",
               caption_key: str = "caption",
               extensions: Sequence[str] = paths.IMAGE_EXTENSIONS):
    if not root:
      raise ValueError("data.folder.root is empty: set it to the image folder")
    self.root, self.manifest = root, manifest
    self.image_key, self.caption_key, self.extensions = image_key, caption_key, extensions

  def _manifest_path(self) -> str:
    return paths.join(self.root, self.manifest)

  def raw_examples(self, process_index=0, process_count=1):
    _check_shard(process_index, process_count)
    if self.manifest:
      yield from self._from_manifest(process_index, process_count)
    else:
      yield from self._from_sidecars(process_index, process_count)

  def _from_manifest(self, process_index, process_count):
    data = paths.read_bytes(self._manifest_path())
    if data is None:
      raise FileNotFoundError(f"manifest {self._manifest_path()!r} not found; set "
                              "data.folder.manifest (or leave it empty for sidecar .txt files)")
    lines = [l for l in data.decode("utf-8", errors="replace").splitlines() if l.strip()]
    for i in preprocess.shard_indices(len(lines), process_index, process_count):
      try:
        entry = json.loads(lines[i])
        if not isinstance(entry, dict):
          raise ValueError("not an object")
      except ValueError:
        yield RawExample(f"manifest:{i}", None, error="corrupt_record")
        continue
      rel = entry.get(self.image_key)
      caption = entry.get(self.caption_key)
      ident = str(rel) if rel else f"manifest:{i}"
      if not isinstance(caption, str):
        caption = None
      if not isinstance(rel, str) or not rel:
        yield RawExample(ident, caption, error="missing_image")
        continue
      image = paths.read_bytes(paths.join(self.root, rel))
      if image is None:
        yield RawExample(ident, caption, error="missing_image")
      else:
        yield RawExample(ident, caption, image_bytes=image)

  def _from_sidecars(self, process_index, process_count):
    files = paths.list_images(self.root, self.extensions)
    for i in preprocess.shard_indices(len(files), process_index, process_count):
      rel = files[i]
      caption = paths.read_bytes(paths.join(self.root, os.path.splitext(rel)[0] + ".txt"))
      image = paths.read_bytes(paths.join(self.root, rel))
      if image is None:
        yield RawExample(rel, caption, error="missing_image")
      elif caption is None:
        yield RawExample(rel, None, error="missing_caption")
      else:
        yield RawExample(rel, caption, image_bytes=image)


def validate_config(data) -> None:
  """Check the `data` config section; messages say what to change."""
  if data.source not in SOURCES:
    raise ValueError(f"data.source={data.source!r}; use one of {SOURCES}")
  if not tuple(data.resolutions) or any(int(r) < 16 for r in data.resolutions):
    raise ValueError(f"data.resolutions={tuple(data.resolutions)}: give sides >= 16")
  if data.source == "shapes":
    if data.shapes.split not in shapes.SPLITS:
      raise ValueError(f"data.shapes.split={data.shapes.split!r}; use one of {shapes.SPLITS}")
    if not 1 <= data.shapes.max_count <= shapes.MAX_COUNT:
      raise ValueError(f"data.shapes.max_count must be in [1, {shapes.MAX_COUNT}]")


def _paths(value) -> str | list[str]:
  return value if isinstance(value, str) else [str(v) for v in value]


def make_source(data) -> Source:
  """The source that `data.source` names, built from its config section."""
  validate_config(data)
  if data.source == "shapes":
    c = data.shapes
    num = c.num_train if c.split == "train" else c.num_heldout
    return ShapesSource(c.split, int(num), int(c.seed), tuple(data.resolutions),
                        **shapes.scene_options(c), processes=int(c.get("processes", 0)))
  if data.source == "tfds":
    c = data.tfds
    return TFDSSource(c.name, c.data_dir, c.split, c.image_key, c.caption_key, c.id_key)
  if data.source == "tfrecord":
    c = data.tfrecord
    return TFRecordSource(c.pattern, c.image_key, c.caption_key, c.id_key, c.compression)
  if data.source == "webdataset":
    c = data.webdataset
    return WebDatasetSource(_paths(c.shards), tuple(c.image_extensions), c.caption_extension,
                            c.caption_key)
  if data.source == "parquet":
    c = data.parquet
    return ParquetSource(_paths(c.files), c.image_key, c.caption_key, c.id_key, c.image_root)
  c = data.folder
  return FolderSource(c.root, c.manifest, c.image_key, c.caption_key, tuple(c.extensions))


def iterate_examples(data, process_index: int = 0, process_count: int = 1,
                     counter: SkipCounter | None = None,
                     num_workers: int | None = None) -> Iterator[dict]:
  """{'id', 'image': {res: uint8 HxWx3}, 'caption'} for this process's slice of the source.

  Pass `jax.process_index()` / `jax.process_count()` on multi-host runs. Skips are counted in
  `counter` (create one to read them afterwards).
  """
  counter = counter if counter is not None else SkipCounter(record_ids=False)
  source = make_source(data)
  options = preprocess.options_from_config(data)
  workers = int(data.num_workers if num_workers is None else num_workers)
  return preprocess.preprocess_stream(source.raw_examples(process_index, process_count),
                                      options, counter, num_workers=workers)
