"""WebDataset tar shards as img2dataset writes them (LAION, COYO, DataComp, CC12M downloads).

A shard `000000.tar` holds samples as files that share a key: `KEY.jpg` (or .png, .webp, ...)
with `KEY.txt` (the caption) and/or `KEY.json` (img2dataset's metadata, whose `caption` field
is used when there is no caption file). Files are grouped into samples by WebDataset's rule:
consecutive files whose names agree up to the first dot of the base name form one sample
(`a/b.c.jpg` has key `a/b` and extension `c.jpg`); names starting with `__` are metadata.

The shards are read with `tarfile` in stream mode (one pass, any file object, gzip too), not
with the `webdataset` package's reader: that one reads a file's bytes before it knows whether
the file starts a new sample, so a damaged file also loses the whole sample before it
(docs/experiments.md).

An example's id is `<shard file name>/<key>`, so a skipped one can be found. Skips:
  missing_image     a sample with none of the image extensions
  missing_caption   no caption file and no caption field in its .json (or no .json)
  corrupt_record    a .json that does not parse, or a sample with two files of one extension;
                    or, once per shard, a shard that is missing, truncated or not a tar file
                    (id: the shard's file name; the samples before the damage are kept, the
                    rest of that shard is not read)
"""
from __future__ import annotations

import gzip
import json
import os
import re
import tarfile
import zlib
from typing import Iterator, Sequence

from etils import epath

from muse_jax.data.preprocess import RawExample, shard_indices
from muse_jax.data.sources import files as F

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# What a damaged or missing shard raises while it is read.
_SHARD_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, FileNotFoundError)
_NAME = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # key (dirs + base up to the first dot), ext
_DUPLICATE = "__duplicate__"


def tar_samples(fileobj) -> Iterator[tuple[str, dict[str, bytes]]]:
  """(key, {extension: bytes}) of each sample of a tar stream, in order. A sample is yielded
  as soon as the next one's first name is seen, before that file's bytes are read."""
  key, sample = None, {}
  with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
    for info in tar:
      tar.members = []  # stream mode would keep every header otherwise
      match = _NAME.match(info.name)
      if not info.isreg() or match is None or os.path.basename(info.name).startswith("__"):
        continue
      name_key, ext = match.group(1), match.group(2).lower()
      if name_key != key:
        if sample:
          yield key, sample
        key, sample = name_key, {}
      if ext in sample:
        sample[_DUPLICATE] = b""
      sample[ext] = tar.extractfile(info).read()
  if sample:
    yield key, sample


def _json_field(obj, key: str):
  for part in key.split("/"):
    if not isinstance(obj, dict) or part not in obj:
      return None
    obj = obj[part]
  return obj


class WebDatasetSource:
  """img2dataset-style tar shards; `shards` is a path, folder, glob, brace pattern or list."""

  def __init__(self, shards: str | Sequence[str],
               image_extensions: Sequence[str] = IMAGE_EXTENSIONS,
               caption_extension: str = "txt", caption_key: str = "caption"):
    if not shards:
      raise ValueError("data.webdataset.shards is empty: set it to the tar shards, e.g. "
                       "'/data/laion/{00000..00099}.tar'")
    self.shards = shards
    self.image_extensions = tuple(e.lower().lstrip(".") for e in image_extensions)
    self.caption_extension = caption_extension.lower().lstrip(".")
    self.caption_key = caption_key

  def files(self) -> list[str]:
    return F.expand_paths(self.shards, (".tar", ".tar.gz", ".tgz"), "data.webdataset.shards")

  def raw_examples(self, process_index=0, process_count=1) -> Iterator[RawExample]:
    shard_indices(0, process_index, process_count)  # checks the arguments
    yield from F.shard_files_or_records(self.files(), self._read_shard, process_index,
                                        process_count)

  def _read_shard(self, path: str) -> Iterator[RawExample]:
    name = os.path.basename(path)
    try:
      with epath.Path(path).open("rb") as f:
        for key, sample in tar_samples(f):
          yield self._example(f"{name}/{key}", sample)
    except _SHARD_ERRORS:
      yield RawExample(name, None, error="corrupt_record")

  def _example(self, ident: str, sample: dict[str, bytes]) -> RawExample:
    if _DUPLICATE in sample:
      return RawExample(ident, None, error="corrupt_record")
    caption = sample.get(self.caption_extension) if self.caption_extension else None
    if caption is None and "json" in sample:
      try:
        caption = _json_field(json.loads(sample["json"]), self.caption_key)
      except ValueError:
        return RawExample(ident, None, error="corrupt_record")
      if not isinstance(caption, (str, bytes)):
        caption = None
    image = next((sample[e] for e in self.image_extensions if e in sample), None)
    if image is None:
      return RawExample(ident, caption, error="missing_image")
    return RawExample(ident, caption, image_bytes=image)
