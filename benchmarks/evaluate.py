r"""Evaluation throughput: Inception-v3 (FID) and CLIP images/s, and the projected wall time of an
FID over a large sample set, with random weights (speed does not depend on the values).

  python benchmarks/evaluate.py                       # accelerator: batches 64,128,256, 256 px
  python benchmarks/evaluate.py --batch_sizes=32,64 --image_size=512 --clip_models=vit_l14
  python benchmarks/evaluate.py --tiny                # CPU smoke run in seconds

Timed exactly as `python -m muse_jax.evaluate` scores a batch (muse_jax/evaluation/runner.py),
on every device of this process (the evaluator's data mesh: parameters replicated, each batch's
rows split over the devices, muse_jax/evaluation/devices.py): uint8 images [B, S, S, 3] on the
host ->
  inception  `scorers.load_inception(...).features` (host checks, transfer, bilinear resize to
             the Inception input, the network, features back to the host), then
             `FeatureStats.update` (the float64 sums on the host): column `+stats`;
  clip_image `ClipScorer.image_embeds` (antialiased bicubic resize and crop, vision tower);
  clip_text  the tokenizer (bytes only here: a real BPE vocabulary tokenizes slower) and
             `ClipScorer.text_embeds`.
Each row: compile time (the first call), then the median of --runs timed calls after --warmup.
The projection for --num images at --image_size: the Inception rate of the fastest batch size
(with the statistics) for all images, plus one Fréchet distance of 2048-d statistics (timed
here); and the CLIP score of as many pairs (image + text rows, fastest batch each). Sampling
the images is not included ("given the samples"); benchmarks/sample.py times that.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--batch_sizes", default="64,128,256", help="comma-separated batch sizes")
  p.add_argument("--image_size", type=int, default=256, help="side of the scored images")
  p.add_argument("--inception_size", type=int, default=299,
                 help="Inception input (FID: 299; >= 75 for smoke runs)")
  p.add_argument("--clip_models", default="vit_b32,vit_l14",
                 help="CLIP configs (muse_jax.models.clip.CONFIGS); '' skips CLIP")
  p.add_argument("--num", type=int, default=30000, help="images of the projected evaluation")
  p.add_argument("--runs", type=int, default=5, help="timed calls per row")
  p.add_argument("--warmup", type=int, default=1, help="untimed calls after compiling")
  p.add_argument("--tiny", action="store_true",
                 help="CPU smoke run: batch 2, 32 px images, Inception at 75 px, tiny CLIP, "
                      "1 run")
  args = p.parse_args(argv)
  if args.tiny:
    args.batch_sizes, args.image_size, args.inception_size = "2", 32, 75
    args.clip_models, args.num, args.runs, args.warmup = "tiny", 100, 1, 0
  args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
  args.clip_models = [m for m in args.clip_models.split(",") if m]
  return args


def timed(fn, runs: int, warmup: int) -> tuple[float, float]:
  """(first call's seconds, median seconds of `runs` calls after `warmup` more)."""
  t = time.perf_counter()
  fn()
  first = time.perf_counter() - t
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(runs):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return first, statistics.median(times)


def main(argv=None):
  args = parse_args(argv)
  import jax
  import numpy as np

  from muse_jax.evaluation import fid as F
  from muse_jax.evaluation import devices, scorers
  from muse_jax.evaluation.clip_score import ClipScoreStats
  dev, mesh = jax.devices()[0], devices.local_mesh()
  print(f"device: {mesh.size} x {dev.device_kind} ({jax.default_backend()}); "
        f"{args.image_size} px images; "
        f"Inception input {args.inception_size}; random weights; median of {args.runs} after "
        f"{args.warmup} warm-up")
  # Rows are printed as they finish, so that a run cut short still reports what it measured.
  print("| row | batch | compile+first s | ms/batch | images/s | images/s +stats |")
  print("|---|---|---|---|---|---|", flush=True)
  rng = np.random.default_rng(0)
  best = {}

  def row(name, batch, first, median, with_stats=None):
    plus = "" if with_stats is None else f"{batch / with_stats:.1f}"
    print(f"| {name} | {batch} | {first:.2f} | {1e3 * median:.2f} | {batch / median:.1f} | "
          f"{plus} |", flush=True)
    best[name] = max(best.get(name, 0.0), batch / (median if with_stats is None else with_stats))

  inception = scorers.load_inception(None, "fid", args.inception_size, mesh=mesh)
  for b in args.batch_sizes:
    images = rng.integers(0, 256, (b, args.image_size, args.image_size, 3), dtype=np.uint8)
    first, net = timed(lambda: inception.features(images), args.runs, args.warmup)
    stats = F.FeatureStats(2048)
    _, with_stats = timed(lambda: stats.update(inception.features(images)), args.runs, 0)
    row("inception", b, first, net, with_stats)
  mean = rng.standard_normal(2048)
  a = rng.standard_normal((2048, 2048)) / 45.0
  s1, s2 = a @ a.T, a.T @ a + np.eye(2048) * 1e-3
  _, frechet = timed(lambda: F.frechet_distance(mean, s1, -mean, s2), 1, 0)
  print(f"projected FID of {args.num} images at {args.image_size} px: "
        f"{args.num / best['inception'] + frechet:.1f} s (Inception with statistics "
        f"{best['inception']:.1f} images/s, Fréchet distance {frechet:.2f} s)", flush=True)

  captions = [f"a photo of {i} red cubes on a blue table, seen from the left side"
              for i in range(max(args.batch_sizes))]
  for model in args.clip_models:
    clip = scorers.load_clip(None, model, mesh=mesh)
    for b in args.batch_sizes:
      images = rng.integers(0, 256, (b, args.image_size, args.image_size, 3), dtype=np.uint8)
      first, t = timed(lambda: clip.image_embeds(images), args.runs, args.warmup)
      row(f"clip_image:{model}", b, first, t)

      def text():
        tok = clip.tokenizer(captions[:b])
        return clip.text_embeds(tok.ids, tok.mask)

      first, t = timed(text, args.runs, args.warmup)
      row(f"clip_text:{model}", b, first, t)
    ClipScoreStats().update(clip.image_embeds(images), text())   # the pairs are scorable
    img, txt = best[f"clip_image:{model}"], best[f"clip_text:{model}"]
    print(f"projected CLIP score ({model}) of {args.num} pairs: "
          f"{args.num / img + args.num / txt:.1f} s (images {img:.1f}/s, captions {txt:.1f}/s)",
          flush=True)


if __name__ == "__main__":
  main()
