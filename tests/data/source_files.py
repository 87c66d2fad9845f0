"""Small raw sources written by the tests, with known defects: WebDataset shards, parquet
files, TFRecord files, a TFDS dataset.

`write_webdataset(dir)` writes img2dataset-style shards 000000.tar .. 000002.tar and returns
(kept ids, {skipped id: reason}); `write_parquet(dir)` does the same for a parquet file of
image bytes and one of image paths (both with the same ids, per file).
"""
from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
from PIL import Image


def image_bytes(colour, size=(40, 36), fmt="PNG") -> bytes:
  buf = io.BytesIO()
  Image.new("RGB", size, colour).save(buf, fmt)
  return buf.getvalue()


def noise_png(side: int, seed: int = 0) -> bytes:
  """A PNG of random pixels (it does not compress, so its bytes span several tar blocks)."""
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (side, side, 3), np.uint8)).save(buf, "PNG")
  return buf.getvalue()


def _tar(path, members: list[tuple[str, bytes]]) -> None:
  with tarfile.open(path, "w") as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def _meta(caption=None, **extra) -> bytes:
  obj = {"url": "http://example.com/x.jpg", "status": "success", **extra}
  if caption is not None:
    obj["caption"] = caption
  return json.dumps(obj).encode()


def write_webdataset(root: str, truncate_last: bool = True):
  """Three shards: jpg/png/webp with .txt and/or .json captions, a corrupt image, a missing
  caption, a sample without image, bad json, a file name twice in one sample, and
  (truncate_last) a shard cut off mid-way. Returns (kept ids, {skipped id: reason})."""
  os.makedirs(root, exist_ok=True)
  _tar(os.path.join(root, "000000.tar"), [
      ("000000000.jpg", image_bytes((200, 10, 10), fmt="JPEG")),
      ("000000000.txt", b"a red square"),
      ("000000000.json", _meta("ignored: the .txt wins")),
      ("000000001.png", image_bytes((10, 200, 10))),
      ("000000001.json", _meta("a green square")),
      ("000000002.jpg", b"not an image at all"),
      ("000000002.txt", b"a corrupt image"),
      ("000000003.png", image_bytes((10, 10, 200))),
      ("000000003.json", _meta(None)),  # img2dataset metadata without a caption
      ("000000004.webp", image_bytes((90, 90, 90), fmt="WEBP")),
      ("000000004.txt", b"a grey square"),
  ])
  _tar(os.path.join(root, "000001.tar"), [
      ("000010000.txt", b"a caption without image"),
      ("000010001.png", image_bytes((250, 250, 0))),
      ("000010001.json", b"{not json"),
      ("000010002.png", image_bytes((0, 250, 250))),
      ("000010002.txt", b"a cyan square"),
      ("000010003.png", image_bytes((0, 0, 0))),
      ("000010003.png", image_bytes((0, 0, 0))),  # two files of one name
      ("000010003.txt", b"a duplicate"),
  ])
  last = os.path.join(root, "000002.tar")
  _tar(last, [
      ("000020000.png", image_bytes((250, 0, 250))),
      ("000020000.txt", b"a magenta square"),
      ("000020001.png", noise_png(64)),
      ("000020001.txt", b"cut off"),
  ])
  kept = ["000000.tar/000000000", "000000.tar/000000001", "000000.tar/000000004",
          "000001.tar/000010002", "000002.tar/000020000"]
  skipped = {"000000.tar/000000002": "undecodable", "000000.tar/000000003": "missing_caption",
             "000001.tar/000010000": "missing_image",
             "000001.tar/000010001": "corrupt_record",
             "000001.tar/000010003": "corrupt_record"}
  if truncate_last:
    with tarfile.open(last) as tar:
      cut = tar.getmember("000020001.png").offset_data + 1000  # inside the second image
    data = open(last, "rb").read()
    open(last, "wb").write(data[:cut])
    skipped["000002.tar"] = "corrupt_record"
  else:
    kept.append("000002.tar/000020001")
  return kept, skipped


def write_parquet(root: str):
  """bytes.parquet (an `image` column of encoded images) and paths.parquet (an `image` column
  of paths relative to the parquet's folder), each of 5 rows: 3 good, a null caption, and a
  corrupt image (bytes) or a missing file (paths); plus a `key` id column."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  os.makedirs(os.path.join(root, "images"), exist_ok=True)
  colours = [(200, 20, 20), (20, 200, 20), (20, 20, 200), (200, 200, 20)]
  captions = ["a red square", "a green square", "a blue square", None, "a broken image"]
  keys = [f"row{i}" for i in range(5)]
  blobs = [image_bytes(c, fmt="JPEG" if i % 2 else "PNG") for i, c in enumerate(colours)]
  pq.write_table(pa.table({"key": keys, "image": blobs + [b"\x89PNG garbage"],
                           "caption": captions}), os.path.join(root, "bytes.parquet"),
                 row_group_size=2)
  paths = []
  for i, blob in enumerate(blobs):
    paths.append(f"images/{i}.img")
    open(os.path.join(root, paths[-1]), "wb").write(blob)
  paths.append("images/gone.png")
  pq.write_table(pa.table({"key": keys, "image": paths, "caption": captions}),
                 os.path.join(root, "paths.parquet"))
  kept = ["row0", "row1", "row2"]
  return kept, {"bytes": {"row3": "missing_caption", "row4": "undecodable"},
                "paths": {"row3": "missing_caption", "row4": "missing_image"}}


def write_tfrecords(tmp_path):
  """part-0/1/2.tfrecord (features jpg, txt, key): 7 good records, 2 without image, 2 that are
  not tf.train.Example, and a third file cut off in its second record. Returns the good ids."""
  import tensorflow as tf
  def example(**feats):
    return tf.train.Example(features=tf.train.Features(feature={
        k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v])) for k, v in feats.items()
    })).SerializeToString()
  ids = []
  for f in range(2):
    with tf.io.TFRecordWriter(str(tmp_path / f"part-{f}.tfrecord")) as w:
      for i in range(3):
        key = f"f{f}r{i}"
        ids.append(key)
        w.write(example(jpg=image_bytes((f * 100, i * 50, 30)), txt=f"record {key}".encode(),
                        key=key.encode()))
      w.write(example(txt=b"no image", key=f"f{f}-noimg".encode()))
      w.write(b"\xff\xfe not a tf.train.Example")
  # A third file, cut off in the middle of its second record.
  path = tmp_path / "part-2.tfrecord"
  with tf.io.TFRecordWriter(str(path)) as w:
    w.write(example(jpg=image_bytes((1, 2, 3)), txt=b"whole", key=b"f2r0"))
    w.write(example(jpg=image_bytes((4, 5, 6)), txt=b"cut", key=b"f2r1"))
  data = path.read_bytes()
  path.write_bytes(data[:len(data) - 40])
  return ids + ["f2r0"]


_TFDS_BUILDER = []  # the builder class, made once: TFDS registers a dataset name only once


def write_tfds(data_dir: str) -> None:
  """The TFDS dataset muse_tiny_captions (split train: 7 images, caption 'meta/caption' 'tiny
  i'; image 3 has a blank caption) under data_dir."""
  if not _TFDS_BUILDER:
    _TFDS_BUILDER.append(_tfds_builder())
  _TFDS_BUILDER[0](data_dir=data_dir).download_and_prepare()


def _tfds_builder():
  import tensorflow_datasets as tfds

  class MuseTinyCaptions(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    # No checksums file next to this code (tfds would look one up via importlib_resources).
    code_path = None

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "meta": {"caption": tfds.features.Text()},
      }))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(7)}

    def _generate_examples(self, n):
      for i in range(n):
        img = np.full((24 + i, 40, 3), (i * 30, 10, 200), np.uint8)
        yield i, {"image": img, "meta": {"caption": f"tiny {i}" if i != 3 else "   "}}

  return MuseTinyCaptions
