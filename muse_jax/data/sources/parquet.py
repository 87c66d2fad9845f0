"""Parquet files with a caption column and an image column (read with pyarrow).

The image column (`image_key`) may hold
  binary              the encoded image file (JPEG, PNG, WebP, ...)
  string              a path to the image file, relative to `image_root` ('' = the parquet
                      file's folder) unless absolute or a URL (read through etils.epath)
  struct {bytes, path}  as Hugging Face `datasets` stores an Image feature: bytes when set,
                      else the path
The caption column holds a string (or a list of them: the first is used). Rows are read in
small batches, so a file of encoded images never has to fit in memory.

An example's id is the `id_key` column's value, or `<file name>:<row>`. Skips:
  missing_image     a null image, or a path to no file
  missing_caption   a null caption
  corrupt_record    once per file, a file that is missing or cannot be read as parquet (id:
                    its file name; rows before the damage are kept)
A file without the configured columns is a configuration error (exit status 2).
"""
from __future__ import annotations

import functools
import os
from typing import Iterator, Sequence

from etils import epath

from muse_jax.data.preprocess import RawExample, shard_indices
from muse_jax.data.sources import files as F

_ROWS_PER_BATCH = 64  # rows decoded from parquet at a time: bounds memory with image bytes


def _first(value):
  if isinstance(value, (list, tuple)):
    return value[0] if value else None
  return value


class ParquetSource:
  """Parquet files (path, folder, glob, brace pattern or list) of images and captions."""

  def __init__(self, files: str | Sequence[str], image_key: str = "image",
               caption_key: str = "caption", id_key: str = "", image_root: str = ""):
    if not files:
      raise ValueError("data.parquet.files is empty: set it to the parquet files, e.g. "
                       "'/data/cc12m/*.parquet'")
    self.spec, self.image_key, self.caption_key = files, image_key, caption_key
    self.id_key, self.image_root = id_key, image_root

  def files(self) -> list[str]:
    return F.expand_paths(self.spec, (".parquet",), "data.parquet.files")

  def raw_examples(self, process_index=0, process_count=1) -> Iterator[RawExample]:
    shard_indices(0, process_index, process_count)  # checks the arguments
    yield from F.shard_files_or_records(self.files(), self._read_file, process_index,
                                        process_count)

  def _columns(self, path: str, names: Sequence[str]) -> list[str]:
    wanted = [self.image_key, self.caption_key] + ([self.id_key] if self.id_key else [])
    missing = [k for k in wanted if k not in names]
    if missing:
      keys = {self.image_key: "image_key", self.caption_key: "caption_key",
              self.id_key: "id_key"}
      raise ValueError(f"{path} has no column {missing[0]!r} (has {list(names)}); set "
                       f"data.parquet.{keys[missing[0]]}")
    return wanted

  def _read_file(self, path: str) -> Iterator[RawExample]:
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    name = os.path.basename(path)
    root = self.image_root or os.path.dirname(path)
    row = 0
    try:
      with epath.Path(path).open("rb") as f:
        pf = pq.ParquetFile(f)
        columns = self._columns(path, pf.schema_arrow.names)
        for batch in pf.iter_batches(batch_size=_ROWS_PER_BATCH, columns=columns):
          values = {k: batch.column(k).to_pylist() for k in columns}
          for i in range(batch.num_rows):
            ident = str(values[self.id_key][i]) if self.id_key else f"{name}:{row}"
            row += 1
            yield self._example(ident, values[self.image_key][i],
                                _first(values[self.caption_key][i]), root)
    except (pa.ArrowException, FileNotFoundError, EOFError):
      yield RawExample(f"{name}" if row == 0 else f"{name}:{row}", None,
                       error="corrupt_record")

  def _example(self, ident: str, image, caption, root: str) -> RawExample:
    if isinstance(image, dict):  # Hugging Face datasets' Image feature
      image = image.get("bytes") or image.get("path")
    if not isinstance(caption, (str, bytes)):
      caption = None
    if isinstance(image, str) and image:  # read in the preprocessing worker, not here
      return RawExample(ident, caption, load=functools.partial(
          self._load_path, ident, caption, F.join(root, image)))
    if image is None or isinstance(image, str):  # null, or an empty path
      return RawExample(ident, caption, error="missing_image")
    return RawExample(ident, caption, image_bytes=bytes(image))

  @staticmethod
  def _load_path(ident: str, caption, path: str) -> RawExample:
    image = F.read_bytes(path)
    if image is None:
      return RawExample(ident, caption, error="missing_image")
    return RawExample(ident, caption, image_bytes=image)
