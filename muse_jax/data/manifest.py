"""The manifest of a precompute output directory: what is where, and how much.

`write_manifest` (process 0, at the end of `run_precompute`) combines every process's index
into WORKDIR/manifest.json; the training input (input_pipeline.py) reads it with `read_manifest`.

Skipped records are counted by reason in the manifest and listed in WORKDIR/skipped.jsonl
(named by the manifest's `skipped_list`), one {"split", "id", "reason"} object per line, in
split, process and shard order (by id within a shard), so the manifest stays small whatever
the count and every dropped file can be found: a source's ids name the file (or shard and key,
or file and row) each record came from. The lists come from the shards' index entries, so a
resumed run lists the same records as an uninterrupted one.

Paths go through etils.epath (`muse_jax.paths`), so the directory may be a gs:// URL;
`write_json` writes atomically (paths.write_atomic), so a reader never sees half a file.
`shard_mismatch` checks a finished shard against its index entry (size, then sha256).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

from etils import epath

from muse_jax import paths
from muse_jax.data import records

MANIFEST = "manifest.json"
SKIPPED = "skipped.jsonl"
FORMAT_VERSION = 1


def write_json(path: str, obj) -> None:
  paths.write_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _write_skipped(path: str, splits: dict[str, list[dict]]) -> tuple[int, int]:
  """Writes the skipped records of every shard entry to `path` (JSON lines); returns (listed,
  unlisted): entries written before ids were recorded count their skips as unlisted."""
  listed = unlisted = 0
  lines = []
  for split, shards in splits.items():
    for e in shards:
      if "skipped_ids" not in e:
        unlisted += sum(e["skipped"].values())
        continue
      for ident, reason in e["skipped_ids"]:
        lines.append(json.dumps({"split": split, "id": ident, "reason": reason}) + "\n")
        listed += 1
  paths.write_atomic(path, "".join(lines))
  return listed, unlisted


def read_json(path: str):
  return json.loads(epath.Path(path).read_text())


def _sum_counts(dicts) -> dict[str, int]:
  total: dict[str, int] = {}
  for d in dicts:
    for k, v in d.items():
      total[k] = total.get(k, 0) + int(v)
  return dict(sorted(total.items()))


def write_manifest(workdir: str, config, spec: records.RecordSpec, splits: Sequence[str],
                   process_count: int, extra: dict) -> dict:
  """Combine every process's index into WORKDIR/manifest.json (process 0)."""
  out_splits, entries = {}, {}
  for split in splits:
    shards = []
    for p in range(process_count):
      path = os.path.join(workdir, "index", f"{split}-{p:05d}.json")
      if not epath.Path(path).exists():
        raise RuntimeError(f"process {p} has not finished split {split!r} ({path} missing)")
      shards += read_json(path)["shards"]
    shards.sort(key=lambda e: (e["process"], e["shard"]))
    entries[split] = shards
    out_splits[split] = {
        "files": [e["file"] for e in shards],
        "records_per_file": [e["records"] for e in shards],
        "records": sum(e["records"] for e in shards),
        "seen": sum(e["seen"] for e in shards),
        "skipped": _sum_counts(e["skipped"] for e in shards),
        "notes": _sum_counts(e["notes"] for e in shards),
        "sha256": [e["sha256"] for e in shards],
    }
  listed, unlisted = _write_skipped(os.path.join(workdir, SKIPPED), entries)
  manifest = {"format_version": FORMAT_VERSION, "spec": spec.to_json(),
              "shard_dir": "shards", "splits": out_splits, "process_count": process_count,
              "skipped_list": {"file": SKIPPED, "records": listed, "unlisted": unlisted},
              **extra, "config": json.loads(config.to_json_best_effort())}
  write_json(os.path.join(workdir, MANIFEST), manifest)
  return manifest


def read_manifest(path: str) -> dict:
  """The manifest of a precompute output directory (or of the manifest file itself)."""
  file = path if path.endswith(".json") else os.path.join(path, MANIFEST)
  if not epath.Path(file).exists():
    raise FileNotFoundError(f"no {MANIFEST} in {path!r}: run `python -m muse_jax.precompute "
                            f"--workdir={path}` first (or point data.path at its output)")
  m = read_json(file)
  if m.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{file}: format_version {m.get('format_version')} is not "
                     f"{FORMAT_VERSION}; rerun precompute with this version")
  return m


def sha256_file(path: str) -> str:
  with epath.Path(path).open("rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def shard_mismatch(path: str, entry: dict) -> str | None:
  """Why the shard file at `path` is not the one its index `entry` records, or None.

  The size is compared first, so a truncated file costs no read; then the sha256, which
  catches changed bytes. Entries written before sizes were recorded are checked by hash only.
  """
  try:
    size = epath.Path(path).stat().length
  except FileNotFoundError:
    return "is missing"
  if "bytes" in entry and size != int(entry["bytes"]):
    return f"has {size} bytes, its index entry {int(entry['bytes'])}"
  if entry.get("sha256") and sha256_file(path) != entry["sha256"]:
    return "does not match the sha256 in its index entry"
  return None
