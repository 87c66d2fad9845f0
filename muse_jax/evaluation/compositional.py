"""Compositional accuracy on the shapes grammar: per attribute and overall.

Given images (e.g. generated from shapes captions) and their captions, the detector reads every
image and `evaluate` reports the fraction correct for each attribute (count, colour, shape,
position) and overall (all four), as defined in `detector.score`. Run it on prompts of the
`train` split and of the `heldout` split (`shapes.HELDOUT_PAIRS`, colour-shape pairs never seen in
training); the gap between the two measures compositional generalisation.

numpy only (no TensorFlow); images are uint8 HxWx3 arrays of any resolution.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Sequence

import numpy as np

from muse_jax.data.shapes import dataset as shapes, grammar
from muse_jax.evaluation import detector

METRICS = detector.ATTRIBUTES + ("overall",)
# The detector's numpy, Pillow and scipy.ndimage calls release the GIL for most of an image's
# time, so threads read images in parallel (the same results, in order).
MAX_THREADS = 8


def score_scenes(images: Iterable[np.ndarray], scenes: Sequence[grammar.Scene],
                 min_area_frac: float = 0.002, threads: int | None = None) -> list[dict]:
  """`detector.score_scene` of each image against its scene (same order), on up to `threads`
  threads (None: the host's cores, at most MAX_THREADS). Stops at the shorter of the two."""
  n = threads if threads is not None else min(MAX_THREADS, os.cpu_count() or 1)
  score = lambda image, scene: detector.score_scene(  # noqa: E731
      np.asarray(image), scene, min_area_frac)
  if n <= 1 or len(scenes) <= 1:
    return [score(im, sc) for im, sc in zip(images, scenes)]
  with ThreadPoolExecutor(n, thread_name_prefix="detector") as pool:
    return list(pool.map(score, images, scenes))


def count_correct(images: Iterable[np.ndarray], captions: Sequence[str],
                  min_area_frac: float = 0.002) -> dict[str, int]:
  """How many of `images` are right per attribute and overall against `captions` (same order).

  Returns {'count', 'colour', 'shape', 'position', 'overall': number correct,
  'num_examples': n}: the sums `evaluate` divides, so counts of separate batches add up to the
  counts of their union. Raises ValueError if the lengths differ, and
  grammar.CaptionParseError for a caption outside the shapes grammar.
  """
  captions = list(captions)
  if hasattr(images, "__len__") and len(images) != len(captions):
    raise ValueError(f"got {len(images)} images for {len(captions)} captions")
  scenes = [grammar.parse_caption(c) for c in captions]
  totals = {m: 0 for m in METRICS}
  results = score_scenes(images, scenes, min_area_frac)
  for result in results:
    for m in METRICS:
      totals[m] += bool(result[m])
  n = len(results)
  if n != len(captions):
    raise ValueError(f"got {n} images for {len(captions)} captions")
  totals["num_examples"] = n
  return totals


def accuracies(counts: dict[str, int]) -> dict[str, float]:
  """`count_correct`'s counts -> accuracy per metric in [0, 1], plus 'num_examples'."""
  n = int(counts["num_examples"])
  if n == 0:
    raise ValueError("no examples to evaluate")
  out: dict[str, float] = {m: counts[m] / n for m in METRICS}
  out["num_examples"] = n
  return out


def evaluate(images: Iterable[np.ndarray], captions: Sequence[str],
             min_area_frac: float = 0.002) -> dict[str, float]:
  """Accuracy per attribute and overall of `images` against `captions` (same order).

  Returns {'count', 'colour', 'shape', 'position', 'overall': accuracy in [0, 1],
  'num_examples': n}. Raises ValueError if the lengths differ or there are no examples, and
  grammar.CaptionParseError for a caption outside the shapes grammar.
  """
  return accuracies(count_correct(images, captions, min_area_frac))


def evaluate_dataset(split: str = "heldout", num_examples: int = 100, seed: int = 0,
                     resolution: int = 64) -> dict[str, float]:
  """Detector accuracy on the dataset's own images (the ceiling for generated samples)."""
  ds = shapes.ShapesDataset(split, num_examples, seed, resolution)
  examples = list(ds)
  return evaluate([e.image for e in examples], [e.caption for e in examples])


def format_report(results: dict[str, dict[str, float]]) -> str:
  """A small table, one row per split name: accuracy per metric in percent."""
  lines = ["split      " + " ".join(f"{m:>9}" for m in METRICS) + "        n"]
  for name, r in results.items():
    lines.append(f"{name:<10} " + " ".join(f"{100 * r[m]:8.1f}%" for m in METRICS)
                 + f" {int(r['num_examples']):8d}")
  return "\n".join(lines)
