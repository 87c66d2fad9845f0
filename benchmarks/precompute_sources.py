"""Precompute throughput from each file-based raw source: WebDataset shards, an image folder,
parquet, with the same images and tiny random models on CPU.

  python benchmarks/precompute_sources.py                        # 1024 images, 2 workers
  taskset -c 0,1 python benchmarks/precompute_sources.py --num=2048 --workers=2

Writes --num JPEGs (--source_size, random smooth content, captions of a few words) as
img2dataset-style tar shards (KEY.jpg + KEY.txt + KEY.json, --per_shard samples each), as a
folder with sidecar .txt captions, and as parquet files of image bytes, then prints for each
  read        examples/s of the source alone: listing, reading, decoding and resizing to 64 px
              on --workers threads (no models)
  precompute  examples/s of the whole job (configs/shapes_precompute.py's tiny f8 VQ at 64 px
              and tiny T5, batches of --batch): source, models, records, writing; the models
              are built and compiled once, before the timed runs
each the median of --repeats runs, the sources taking turns. Not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import shapes_precompute  # pylint: disable=g-import-not-at-top
from muse_jax.data import preprocess, raw_sources  # pylint: disable=g-import-not-at-top

WORDS = ("red", "green", "blue", "small", "large", "circle", "square", "on", "the", "left")


def write_data(root: str, num: int, size: tuple[int, int], per_shard: int, seed: int) -> None:
  """root/wds/*.tar, root/folder/*.jpg + .txt and root/parquet/*.parquet of the same images."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  rng = np.random.default_rng(seed)
  for d in ("wds", "folder", "parquet"):
    os.makedirs(os.path.join(root, d), exist_ok=True)
  distinct = []
  for _ in range(min(num, 32)):  # a few distinct images, cycled
    base = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(base).resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
    distinct.append(buf.getvalue())
  for s in range(0, num, per_shard):
    keys, images, captions = [], [], []
    with tarfile.open(os.path.join(root, "wds", f"{s // per_shard:06d}.tar"), "w") as tar:
      for i in range(s, min(s + per_shard, num)):
        key, image = f"{i:09d}", distinct[i % len(distinct)]
        caption = " ".join(rng.choice(WORDS, 6))
        meta = json.dumps({"caption": caption, "key": key, "status": "success"}).encode()
        for ext, data in (("jpg", image), ("txt", caption.encode()), ("json", meta)):
          info = tarfile.TarInfo(f"{key}.{ext}")
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
        with open(os.path.join(root, "folder", f"{key}.jpg"), "wb") as f:
          f.write(image)
        with open(os.path.join(root, "folder", f"{key}.txt"), "w") as f:
          f.write(caption)
        keys.append(key)
        images.append(image)
        captions.append(caption)
    pq.write_table(pa.table({"key": keys, "image": images, "caption": captions}),
                   os.path.join(root, "parquet", f"{s // per_shard:06d}.parquet"))


def config_for(source: str, root: str, workers: int, batch: int, per_shard: int,
               spiece: str = ""):
  c = shapes_precompute.get_config()
  c.text_encoder.spiece_model = spiece  # '' = train one on the captions (first config only)
  c.data.source = source
  c.data.num_workers = workers
  c.data.min_size = 16
  c.data.webdataset.shards = os.path.join(root, "wds")
  c.data.folder.root = os.path.join(root, "folder")
  c.data.parquet.files = os.path.join(root, "parquet")
  c.precompute.update(dict(splits=("train",), batch_size=batch, examples_per_shard=per_shard))
  return c


def bench_read(c, num: int) -> float:
  from muse_jax.precompute.shards import split_data
  data = split_data(c, "train")
  counter = preprocess.SkipCounter()
  start = time.perf_counter()
  n = sum(1 for _ in raw_sources.iterate_examples(data, counter=counter))
  assert n == num, (n, counter)
  return n / (time.perf_counter() - start)


def bench_precompute(c, models, workdir: str, num: int) -> float:
  from muse_jax.precompute import run as precompute
  start = time.perf_counter()
  manifest = precompute.run_precompute(c, workdir, stream=io.StringIO(),
                                       models_fn=lambda *a: models)
  assert manifest["splits"]["train"]["records"] == num, manifest["splits"]["train"]
  return num / (time.perf_counter() - start)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num", type=int, default=1024, help="images per source")
  parser.add_argument("--per_shard", type=int, default=256,
                      help="samples per tar shard and parquet file; also precompute's shard")
  parser.add_argument("--source_size", default="320x256", help="WxH of the JPEGs")
  parser.add_argument("--workers", type=int, default=2, help="decoding threads")
  parser.add_argument("--batch", type=int, default=64, help="precompute batch")
  parser.add_argument("--sources", default="webdataset,folder,parquet")
  parser.add_argument("--repeats", type=int, default=3, help="runs per source (medians)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  import jax

  from muse_jax.parallel.mesh import make_mesh
  from muse_jax.precompute import run as precompute
  root = tempfile.mkdtemp(prefix="bench_sources_")
  size = tuple(int(v) for v in args.source_size.split("x"))
  write_data(root, args.num, size, args.per_shard, args.seed)
  sources = args.sources.split(",")
  c = config_for(sources[0], root, args.workers, args.batch, args.per_shard)
  os.makedirs(os.path.join(root, "spiece"))
  spiece = precompute.ensure_spiece_model(c, os.path.join(root, "spiece"))
  models = precompute.build_models(c, make_mesh(c.mesh), spiece)
  warm = config_for(sources[0], root, args.workers, args.batch, args.batch, spiece)
  warm.data.webdataset.shards = os.path.join(root, "wds", "000000.tar")
  warm.data.parquet.files = os.path.join(root, "parquet", "000000.parquet")
  precompute.run_precompute(warm, os.path.join(root, "warm"), stream=io.StringIO(),
                            models_fn=lambda *a: models)  # compiles the models
  print(f"{args.num} JPEGs {args.source_size}, {args.workers} workers, batch {args.batch}, "
        f"{jax.device_count()} {jax.default_backend()} device(s), {os.cpu_count()} CPUs")
  rates = {s: ([], []) for s in sources}
  try:
    for r in range(args.repeats):  # the sources take turns, so load drifts hit each alike
      for source in sources:
        c = config_for(source, root, args.workers, args.batch, args.per_shard, spiece)
        rates[source][0].append(bench_read(c, args.num))
        out = os.path.join(root, f"out_{r}_{source}")
        rates[source][1].append(bench_precompute(c, models, out, args.num))
  finally:
    shutil.rmtree(root)
  print("| source | read examples/s | precompute examples/s |")
  print("|---|---|---|")
  for source, (read, pre) in rates.items():
    print(f"| {source} | {np.median(read):.1f} | {np.median(pre):.1f} |", flush=True)


if __name__ == "__main__":
  main()
