"""Paths: every file muse_jax reads or writes goes through `etils.epath`, so a local path and a
`gs://bucket/dir` URL (or any other fsspec scheme: s3://, ...) work alike, as in Orbax.

epath sends `gs://` to gcsfs (fsspec), not to TensorFlow's GCS client: the package's
`__init__` sets `EPATH_USE_TF=false` unless the environment sets it. TF's client has no endpoint
setting, so it cannot be tested against a local GCS emulator; gcsfs, google-cloud-storage and
TensorStore (which writes Orbax's arrays) can (docs/design.md, "Storage").

Atomic replacement: a local file is written to a temporary name, synced and renamed over the
target. Object stores have no rename (gcsfs copies, then deletes), but a GCS object write is
atomic by itself: the object appears, or replaces the old one, only when its upload completes.
So on a URL the target is written directly, in one upload.
"""
from __future__ import annotations

import logging
import os

# fsspec logs an INFO line for every remote file it opens for reading.
logging.getLogger("fsspec").setLevel(logging.WARNING)

from etils import epath

PathLike = epath.PathLike


def is_url(path: PathLike) -> bool:
  """True for 'gs://...', 's3://...' and the like; False for a local path."""
  return "://" in os.fspath(path)


def resolve(path: PathLike) -> epath.Path:
  """An absolute local path, or the URL as given (os.path.abspath would turn 'gs://b/x' into
  './gs:/b/x')."""
  path = os.fspath(path)
  return epath.Path(path if is_url(path) else os.path.abspath(path))


def write_atomic(path: PathLike, data: bytes | str) -> None:
  """Writes `data` to `path` so that readers see the old content or all of the new, never a
  part (locally: temporary file, fsync, rename; on a URL: one object upload)."""
  path = epath.Path(path)
  raw = data.encode("utf-8") if isinstance(data, str) else data
  if is_url(path):
    path.write_bytes(raw)
    return
  tmp = f"{path}.tmp.{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(raw)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
