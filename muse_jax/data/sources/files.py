"""Paths of raw sources, read through etils.epath (local paths, gs:// and other filesystems).

`expand_paths` turns what a config gives (a path, a folder, a glob, a brace pattern such as
`shards/{000000..000099}.tar`, '::'-separated patterns, or a list of any of them) into the
list of files, in a deterministic order. `shard_files_or_records` gives one process its
disjoint slice of the records of a list of files.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import braceexpand
from etils import epath

T = TypeVar("T")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
_GLOB_CHARS = ("*", "?", "[")


def is_remote(path: str) -> bool:
  return "://" in path


def join(root: str, rel: str) -> str:
  """`rel` under `root`, unless it is absolute or a URL."""
  if os.path.isabs(rel) or is_remote(rel) or not root:
    return rel
  return str(epath.Path(root) / rel)


def read_bytes(path: str) -> bytes | None:
  """The file's bytes, or None if it is missing (or a folder, or not readable)."""
  try:
    return epath.Path(path).read_bytes()
  except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
    return None


def list_images(root: str, extensions: Sequence[str]) -> list[str]:
  """The files under `root` (recursively) with one of `extensions`, relative to it, sorted."""
  exts = tuple(e.lower() for e in extensions)
  # gcsfs walks a gs:// folder as paths without the scheme: strip whichever prefix they carry.
  prefixes = [str(epath.Path(root)).rstrip("/") + "/"]
  if is_remote(root):
    prefixes.append(prefixes[0].split("://", 1)[1])
  out = []
  for d, _, names in epath.Path(root).walk():
    for n in names:
      if n.lower().endswith(exts):
        path = str(d / n)
        out.append(next((path[len(p):] for p in prefixes if path.startswith(p)), path))
  return sorted(out)


def _glob(pattern: str) -> list[str]:
  parts = pattern.split("/")
  first = next(i for i, p in enumerate(parts) if any(c in p for c in _GLOB_CHARS))
  root = "/".join(parts[:first]) or ("/" if pattern.startswith("/") else ".")
  rest = "/".join(parts[first:])
  base = epath.Path(root)
  return sorted(str(p) if root != "." else os.path.relpath(str(p)) for p in base.glob(rest))


def _expand_one(pattern: str, suffixes: Sequence[str]) -> list[str]:
  out = []
  for part in pattern.split("::"):
    for path in braceexpand.braceexpand(part.strip()):
      if any(c in path for c in _GLOB_CHARS):
        out += _glob(path)
      elif epath.Path(path).is_dir():
        out += sorted(str(p) for p in epath.Path(path).iterdir()
                      if p.name.lower().endswith(tuple(suffixes)))
      else:
        out.append(path)
  return out


def expand_paths(spec: str | Sequence[str], suffixes: Sequence[str], what: str) -> list[str]:
  """The files `spec` names (see the module doc); a folder gives its files ending in one of
  `suffixes`, sorted. Explicit paths and brace expansions keep their order; a missing one is
  counted by the source that opens it. Raises FileNotFoundError naming `what` (the config key)
  if no file exists."""
  patterns = [spec] if isinstance(spec, str) else list(spec)
  files = [f for p in patterns if p for f in _expand_one(str(p), suffixes)]
  # One existing file is enough (one stat in the usual case); the others are counted as
  # they are opened.
  if not any(epath.Path(f).exists() for f in files):
    raise FileNotFoundError(f"{what}={spec!r} names no existing files; give a path, folder, "
                            "glob, brace pattern (e.g. 'shards/{000000..000009}.tar') or a list")
  return files


def shard_files_or_records(files: Sequence[str], read: Callable[[str], Iterable[T]],
                           process_index: int, process_count: int) -> Iterator[T]:
  """This process's records of `files`: whole files (process_index::process_count) when there
  are at least as many files as processes, else every process_count-th record of all files.
  Either way the slices are disjoint, cover all records, and keep the files' order."""
  if len(files) >= process_count:
    for path in files[process_index::process_count]:
      yield from read(path)
    return
  index = 0
  for path in files:
    for record in read(path):
      if index % process_count == process_index:
        yield record
      index += 1
