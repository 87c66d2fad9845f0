"""Throughput of the raw data side: shapes generation, detection, and image preprocessing.

  python benchmarks/data_sources.py                       # defaults: 2 workers, 64/256/512 px
  python benchmarks/data_sources.py --workers=1 --num=100 --resolutions=256,512

Prints examples/s for
  shapes      generating shapes examples (scene sampling + rendering) at each resolution
  detector    scoring shapes images against their captions with the detector at each
              resolution (`compositional.score_scenes`), on 1 and on --workers threads
  preprocess  decoding + RGB conversion + resize/crop to all resolutions of in-memory JPEGs
              (source size --source_size), on --workers threads
Not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from muse_jax.data import preprocess
from muse_jax.data.shapes import dataset as shapes, grammar  # noqa: E402
from muse_jax.evaluation import compositional  # noqa: E402


def _rate(fn, num: int) -> float:
  fn(0)  # warm up
  start = time.perf_counter()
  for i in range(num):
    fn(i)
  return num / (time.perf_counter() - start)


def _jpegs(num: int, size: tuple[int, int], seed: int) -> list[bytes]:
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(min(num, 16)):  # a few distinct images, cycled
    base = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    out.append(buf.getvalue())
  return [out[i % len(out)] for i in range(num)]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num", type=int, default=200, help="examples per measurement")
  parser.add_argument("--resolutions", default="64,256,512",
                      help="comma-separated square sides")
  parser.add_argument("--workers", type=int, default=2, help="preprocessing and detector threads")
  parser.add_argument("--source_size", default="1024x768", help="WxH of the JPEGs to preprocess")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  resolutions = tuple(int(r) for r in args.resolutions.split(","))

  print(f"{'what':<12} {'resolution':>10} {'examples/s':>12}")
  for res in resolutions:
    rate = _rate(lambda i, r=res: shapes.generate(i, "train", args.seed, r), args.num)
    print(f"{'shapes':<12} {res:>10} {rate:12.1f}")
  for res in resolutions:
    examples = [shapes.generate(i, "train", args.seed, res) for i in range(args.num)]
    images = [e.image for e in examples]
    scenes = [grammar.parse_caption(e.caption) for e in examples]
    for n in sorted({1, args.workers}):
      start = time.perf_counter()
      compositional.score_scenes(images, scenes, threads=n)
      rate = args.num / (time.perf_counter() - start)
      print(f"{'detector':<12} {res:>10} {rate:12.1f}   ({n} thread{'s' if n > 1 else ''})")

  w, h = (int(v) for v in args.source_size.split("x"))
  data = _jpegs(args.num, (w, h), args.seed)
  options = preprocess.PreprocessOptions(resolutions=resolutions, min_size=16)
  raws = [preprocess.RawExample(str(i), "a caption", image_bytes=d) for i, d in enumerate(data)]
  counter = preprocess.SkipCounter()
  start = time.perf_counter()
  kept = sum(1 for _ in preprocess.preprocess_stream(raws, options, counter, args.workers))
  rate = kept / (time.perf_counter() - start)
  label = "+".join(str(r) for r in resolutions)
  print(f"{'preprocess':<12} {label:>10} {rate:12.1f}   ({args.workers} workers, "
        f"{w}x{h} JPEG; {counter})")


if __name__ == "__main__":
  main()
