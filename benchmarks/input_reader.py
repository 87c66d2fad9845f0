"""The training input readers: throughput, resume latency, host memory, on-disk format.

  python benchmarks/input_reader.py                       # all four parts, data under /tmp
  python benchmarks/input_reader.py --parts=throughput --readers=grain,tf,numpy
  python benchmarks/input_reader.py --parts=resume,memory --workdir=/data/bench_reader

Parts (each prints a table row per measurement):
  throughput  examples/s of make_token_source (data.reader=...) at base_632m's record size:
              16x16 tokens of 8192 codes, T5-XXL embeddings (4096-d bf16, text_len uniform in
              1..40, about 170 KB a record), padded to 128 text positions, batches of
              --batch, after --warmup batches. The records (--records of them) sit in the
              page cache after the first pass: this is the reader's own cost, not the disk's.
  formats     raw random-access reads (no parsing) of the same records: TFRecord + offset
              index (record_index.ShardedRecords, CRCs checked) against ArrayRecord
              (group_size:1, brotli as its default and uncompressed) through
              grain.sources.ArrayRecordDataSource; records/s over a random permutation, one
              thread, best of --repeat passes, and the time to open the split and read its
              first record.
  resume      seconds from building a reader (--readers, not numpy) of a --big-record split
              (synthetic: tiny records, one frame repeated, real offset indexes) to its first
              batch, at stream position 10 and at --big // 2.
  memory      peak RSS while the grain reader reads --memory_batches batches from a shuffle of
              the --big-record split, against a split of --big // 1000 records: memory does not
              grow with the dataset's record count.
Not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import types

import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base_632m  # pylint: disable=g-import-not-at-top
from muse_jax.data import input_pipeline, manifest, record_index, records
from muse_jax.training.base_stage import BaseStage

BASE_SPEC = records.RecordSpec(grid_lo=16, grid_hi=0, codebook_size=8192, text_dim=4096,
                               text_max_length=128)
TINY_SPEC = records.RecordSpec(grid_lo=2, grid_hi=0, codebook_size=64, text_dim=8,
                               text_max_length=4)


def _example(i: int, spec: records.RecordSpec, rng) -> dict:
  n = int(rng.integers(1, min(40, spec.text_max_length) + 1))
  return {"id": f"e{i}", "caption": f"caption {i}",
          "tokens_lo": rng.integers(0, spec.codebook_size, spec.tokens_lo),
          "text_emb": rng.standard_normal((n, spec.text_dim)).astype(np.float32),
          "text_len": n}


def write_split(root: str, spec, num: int, per_shard: int) -> list[bytes]:
  """A precompute output (manifest, shards, offset indexes) of `num` random records."""
  os.makedirs(os.path.join(root, "shards"), exist_ok=True)
  rng = np.random.default_rng(0)
  recs = [records.encode_example(_example(i, spec, rng), spec) for i in range(num)]
  files, counts = [], []
  for k, start in enumerate(range(0, num, per_shard)):
    chunk = recs[start:start + per_shard]
    name = f"train-00000-{k:05d}.tfrecord"
    path = os.path.join(root, "shards", name)
    records.write_tfrecord(path, chunk)
    record_index.write_index(path, record_index.offsets_from_sizes(records.frame_sizes(chunk)))
    files.append(name)
    counts.append(len(chunk))
  _manifest(root, spec, files, counts)
  return recs


def _manifest(root, spec, files, counts):
  m = {"format_version": manifest.FORMAT_VERSION, "spec": spec.to_json(), "shard_dir": "shards",
       "splits": {"train": {"files": files, "records_per_file": counts,
                            "records": sum(counts)}}}
  manifest.write_json(os.path.join(root, manifest.MANIFEST), m)


def write_big_split(root: str, num: int, per_shard: int) -> None:
  """`num` tiny records: one frame repeated in each shard, with its real offset index."""
  if os.path.exists(os.path.join(root, manifest.MANIFEST)):
    return
  os.makedirs(os.path.join(root, "shards"), exist_ok=True)
  rec = records.encode_example(_example(0, TINY_SPEC, np.random.default_rng(0)), TINY_SPEC)
  frame = records.frame_records([rec])
  files, counts = [], []
  for k, start in enumerate(range(0, num, per_shard)):
    n = min(per_shard, num - start)
    name = f"train-00000-{k:05d}.tfrecord"
    path = os.path.join(root, "shards", name)
    with open(path, "wb") as f:
      f.write(frame * n)
    record_index.write_index(path, record_index.offsets_from_sizes([len(frame)] * n))
    files.append(name)
    counts.append(n)
  _manifest(root, TINY_SPEC, files, counts)


def _stage(path: str, reader: str, batch: int, spec: records.RecordSpec, threads: int):
  c = base_632m.get_config()
  c.model.update(dict(grid_size=spec.grid_lo, text_dim=spec.text_dim,
                      text_length=max(spec.text_max_length, 8),
                      codebook_size=spec.codebook_size))
  c.data.update(dict(source="precomputed", path=path, reader=reader, shuffle_buffer=10_000,
                     grain_threads=threads))
  c.train.batch_size = batch
  st = types.SimpleNamespace(config=c)
  st.features = lambda: BaseStage.features(st)
  return st


def throughput(args, root: str) -> None:
  for reader in args.readers.split(","):
    rates = []
    for _ in range(args.repeat):
      t0 = time.perf_counter()
      src = input_pipeline.make_token_source(
          _stage(root, reader, args.batch, BASE_SPEC, args.threads), "train", 0, 1)
      for _ in range(args.warmup):
        next(src)
      start_s = time.perf_counter() - t0
      t0 = time.perf_counter()
      for _ in range(args.batches):
        next(src)
      rates.append(args.batch * args.batches / (time.perf_counter() - t0))
      if hasattr(src, "close"):
        src.close()
      del src
    print(f"| throughput | {reader} | {max(rates):,.0f} examples/s (best of {len(rates)}; "
          f"median {np.median(rates):,.0f}) | start + {args.warmup} batches {start_s:.2f} s |",
          flush=True)


def formats(args, root: str) -> None:
  import grain
  from array_record.python import array_record_module
  files, counts, _ = input_pipeline.split_files(root, "train")
  ar_files = {}
  for options in ("group_size:1", "group_size:1,uncompressed"):
    ar_dir = os.path.join(root, "array_record_" + options.replace(":", "").replace(",", "_"))
    os.makedirs(ar_dir, exist_ok=True)
    ar_files[options] = []
    for f in files:
      out = os.path.join(ar_dir, os.path.basename(f) + ".array_record")
      if not os.path.exists(out):
        w = array_record_module.ArrayRecordWriter(out, options)
        for item in records.read_tfrecord(f):
          w.write(item)
        w.close()
      ar_files[options].append(out)
  order = np.random.default_rng(1).permutation(sum(counts))
  for name, make, data in (
      ("tfrecord+index", lambda: record_index.ShardedRecords(files, counts), lambda r: r[1]),
      ("array_record (brotli)",
       lambda: grain.sources.ArrayRecordDataSource(ar_files["group_size:1"]), lambda r: r),
      ("array_record (uncompressed)", lambda: grain.sources.ArrayRecordDataSource(
          ar_files["group_size:1,uncompressed"]), lambda r: r)):
    t0 = time.perf_counter()
    src = make()
    data(src[0])
    opened = time.perf_counter() - t0
    times = []
    for _ in range(args.repeat):
      t0 = time.perf_counter()
      size = sum(len(data(src[int(j)])) for j in order)
      times.append(time.perf_counter() - t0)
    dt = min(times)
    print(f"| formats | {name} | {len(order) / dt:,.0f} records/s, {size / dt / 1e6:,.0f} MB/s "
          f"(best of {len(times)} passes; median {len(order) / np.median(times):,.0f}) | open "
          f"{opened * 1e3:.1f} ms |", flush=True)


def resume(args, big: str) -> None:
  for reader in args.readers.split(","):
    if reader == "numpy":  # holds every record in memory: not for this split
      continue
    for position in (10, args.big // 2):
      t0 = time.perf_counter()
      src = input_pipeline.make_token_source(_stage(big, reader, args.batch, TINY_SPEC,
                                                    args.threads), "train", 0, 1)
      src.set_state({"reader": reader, "batches": position // args.batch,
                     "positions": [position], "corrupt": [0]})
      next(src)
      print(f"| resume | {reader}, {args.big:,} records | position {position:,}: "
            f"{time.perf_counter() - t0:.3f} s to the first batch |", flush=True)
      if hasattr(src, "close"):
        src.close()


def _peak_rss(fn) -> tuple[float, float]:
  """(RSS before, peak RSS while fn runs), MB, sampled every 10 ms."""
  proc, peak, done = psutil.Process(), [0], threading.Event()

  def sample():
    while not done.is_set():
      peak[0] = max(peak[0], proc.memory_info().rss)
      time.sleep(0.01)

  before = proc.memory_info().rss
  t = threading.Thread(target=sample, daemon=True)
  t.start()
  fn()
  done.set()
  t.join()
  return before / 2**20, max(peak[0], proc.memory_info().rss) / 2**20


def memory(args, big: str, small: str) -> None:
  write_big_split(small, args.big // 1000, args.per_big_shard // 100)
  for path in (small, big):
    src = input_pipeline.make_token_source(_stage(path, "grain", args.batch, TINY_SPEC,
                                                  args.threads), "train", 0, 1)
    n = len(src.records)

    def read(src=src):
      for _ in range(args.memory_batches):
        next(src)

    t0 = time.perf_counter()
    before, peak = _peak_rss(read)
    dt = time.perf_counter() - t0
    examples = args.memory_batches * args.batch
    print(f"| memory | grain, {n:,} records | RSS {before:,.0f} MB before, peak {peak:,.0f} MB "
          f"over {examples:,} examples ({examples / dt:,.0f}/s) |", flush=True)
    src.close()


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--parts", default="throughput,formats,resume,memory")
  p.add_argument("--readers", default="grain,tf", help="throughput, resume: data.reader values")
  p.add_argument("--workdir", default="", help="where the datasets go (reused if present); "
                 "default: a new temporary directory")
  p.add_argument("--records", type=int, default=2048, help="throughput/formats records")
  p.add_argument("--per_shard", type=int, default=256)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--batches", type=int, default=40)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--repeat", type=int, default=3, help="throughput, formats: runs per reader "
                 "or format (on a shared machine the best run is closest to its own cost)")
  p.add_argument("--threads", type=int, default=1, help="data.grain_threads")
  p.add_argument("--big", type=int, default=20_000_000, help="resume/memory records")
  p.add_argument("--per_big_shard", type=int, default=100_000)
  p.add_argument("--memory_batches", type=int, default=2000)
  args = p.parse_args(argv)
  work = args.workdir or tempfile.mkdtemp(prefix="input_reader_")
  parts = args.parts.split(",")
  print("| part | reader | result | note |\n|---|---|---|---|", flush=True)
  base = os.path.join(work, "base632m")
  if "throughput" in parts or "formats" in parts:
    if not os.path.exists(os.path.join(base, manifest.MANIFEST)):
      write_split(base, BASE_SPEC, args.records, args.per_shard)
  if "throughput" in parts:
    throughput(args, base)
  if "formats" in parts:
    formats(args, base)
  big = os.path.join(work, "big")
  if "resume" in parts or "memory" in parts:
    t0 = time.perf_counter()
    write_big_split(big, args.big, args.per_big_shard)
    print(f"(big split ready in {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
  if "resume" in parts:
    resume(args, big)
  if "memory" in parts:
    memory(args, big, os.path.join(work, "small"))


if __name__ == "__main__":
  main()
