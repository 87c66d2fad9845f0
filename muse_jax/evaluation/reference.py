"""FID reference statistics: read from a .npz, or computed once from a folder of images.

A statistics file written here (`fid.save_stats`) carries an `info` dict: the image folder
(path, a digest of its files' names, sizes and times, count, resize) and the fingerprint of the
Inception network (weights digest, variant, input size). Statistics are only comparable when
made by the same network on images prepared the same way, so a reference whose fingerprint
differs from the evaluation's is refused. Files without `info` (pytorch-fid's `mu`/`sigma`
files) are used as they are, and the report says their provenance is unknown.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

from muse_jax import paths
from muse_jax.evaluation import fid
from muse_jax.evaluation.inputs import ImageSet
from muse_jax.evaluation.runner import image_stats
from muse_jax.evaluation.scorers import fingerprint

UNKNOWN = ("unknown (no info in the file, e.g. pytorch-fid's): make sure it was computed with "
           "the same Inception weights, variant and resize")


def load(path: str, inception) -> tuple[fid.Gaussian, dict]:
  """(statistics, report entry) of a reference .npz, checked against `inception`."""
  if not paths.resolve(path).is_file():
    raise FileNotFoundError(f"--reference_stats={path}: no such file")
  g = fid.load_stats(path)
  info = fid.load_stats_info(path)
  if info is None:
    return g, {"path": str(paths.resolve(path)), "provenance": UNKNOWN}
  want = fingerprint(inception.info)
  if info.get("inception") != want:
    raise ValueError(f"--reference_stats={path} was computed with Inception "
                     f"{info.get('inception')}, this evaluation uses {want}: compute the "
                     "reference with the same network (--save_stats)")
  return g, {"path": str(paths.resolve(path)), **info}


def describe(images: ImageSet, inception) -> dict:
  return {"images": os.path.abspath(images.where), "images_digest": images.digest(),
          "count": len(images), "resize": images.resize,
          "inception": fingerprint(inception.info)}


def save(path: str, stats, info: dict) -> None:
  """Writes statistics and their info atomically (fid.save_stats)."""
  fid.save_stats(path, stats, info)


def from_images(directory: str, resize: Optional[int], inception, batch_size: int,
                cache: str, log: Callable[[str], None] = print,
                write: bool = True) -> tuple[fid.Gaussian, dict]:
  """Statistics of every image in `directory`, saved to `cache` (unless not `write`: the
  processes other than 0 of a multi-process run); a later call whose folder and network match
  the cache's info reads the cache instead."""
  images = ImageSet.all_files(directory, resize)
  info = describe(images, inception)
  if paths.resolve(cache).is_file() and fid.load_stats_info(cache) == info:
    log(f"reference statistics of {directory}: reusing {cache}")
    return fid.load_stats(cache), {"path": str(paths.resolve(cache)), **info}
  log(f"reference statistics of {len(images)} images in {directory} "
      f"({images.size[0]}x{images.size[1]})")
  stats = image_stats(images, inception, batch_size, log)
  if stats.count < 2:
    raise ValueError(f"{directory}: FID reference statistics need at least 2 images")
  if write:
    save(cache, stats, info)
  return stats.gaussian(), {"path": str(paths.resolve(cache)), **info}
