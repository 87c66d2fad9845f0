"""The manifest of a precompute output directory: what is where, and how much.

`write_manifest` (process 0, at the end of `run_precompute`) combines every process's index
into WORKDIR/manifest.json; the training input (input_pipeline.py) reads it with `read_manifest`.
`write_json` writes to a temporary name and renames, so a reader never sees half a file.
`shard_mismatch` checks a finished shard against its index entry (size, then sha256).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

from muse_jax.data import records

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def write_json(path: str, obj) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _sum_counts(dicts) -> dict[str, int]:
  total: dict[str, int] = {}
  for d in dicts:
    for k, v in d.items():
      total[k] = total.get(k, 0) + int(v)
  return dict(sorted(total.items()))


def write_manifest(workdir: str, config, spec: records.RecordSpec, splits: Sequence[str],
                   process_count: int, extra: dict) -> dict:
  """Combine every process's index into WORKDIR/manifest.json (process 0)."""
  out_splits = {}
  for split in splits:
    shards = []
    for p in range(process_count):
      path = os.path.join(workdir, "index", f"{split}-{p:05d}.json")
      if not os.path.exists(path):
        raise RuntimeError(f"process {p} has not finished split {split!r} ({path} missing)")
      shards += read_json(path)["shards"]
    shards.sort(key=lambda e: (e["process"], e["shard"]))
    out_splits[split] = {
        "files": [e["file"] for e in shards],
        "records_per_file": [e["records"] for e in shards],
        "records": sum(e["records"] for e in shards),
        "seen": sum(e["seen"] for e in shards),
        "skipped": _sum_counts(e["skipped"] for e in shards),
        "notes": _sum_counts(e["notes"] for e in shards),
        "sha256": [e["sha256"] for e in shards],
    }
  manifest = {"format_version": FORMAT_VERSION, "spec": spec.to_json(),
              "shard_dir": "shards", "splits": out_splits, "process_count": process_count,
              **extra, "config": json.loads(config.to_json_best_effort())}
  write_json(os.path.join(workdir, MANIFEST), manifest)
  return manifest


def read_manifest(path: str) -> dict:
  """The manifest of a precompute output directory (or of the manifest file itself)."""
  file = path if path.endswith(".json") else os.path.join(path, MANIFEST)
  if not os.path.exists(file):
    raise FileNotFoundError(f"no {MANIFEST} in {path!r}: run `python -m muse_jax.precompute "
                            f"--workdir={path}` first (or point data.path at its output)")
  m = read_json(file)
  if m.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{file}: format_version {m.get('format_version')} is not "
                     f"{FORMAT_VERSION}; rerun precompute with this version")
  return m


def sha256_file(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def shard_mismatch(path: str, entry: dict) -> str | None:
  """Why the shard file at `path` is not the one its index `entry` records, or None.

  The size is compared first, so a truncated file costs no read; then the sha256, which
  catches changed bytes. Entries written before sizes were recorded are checked by hash only.
  """
  try:
    size = os.path.getsize(path)
  except FileNotFoundError:
    return "is missing"
  if "bytes" in entry and size != int(entry["bytes"]):
    return f"has {size} bytes, its index entry {int(entry['bytes'])}"
  if entry.get("sha256") and sha256_file(path) != entry["sha256"]:
    return "does not match the sha256 in its index entry"
  return None
