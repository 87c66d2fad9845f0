"""The resumable evaluation loop: images in chunks, streaming statistics saved after each chunk.

  acc = run(Evaluation(...), images_fn, log=print)       # None if stopped early (max_chunks)
  report = summarize(evaluation, acc, reference)          # the eval.json dict

Images 0..n-1 are processed in chunks of `chunk_size` (a multiple of `batch_size`); every batch
has `batch_size` rows (the last one padded with copies of its last image, whose results are
dropped), so each network compiles once. After each chunk the statistics of every metric
(`Accumulators`: FID's float64 FeatureStats sums, the CLIP score sums, the compositional
counts) and the number of images done go to OUT/state.npz, written to a temporary file and
renamed, so the file always holds a finished chunk. A rerun with the same `identity` (captions,
source, networks, batch and chunk size...) continues after the last saved chunk; since batches
and their order are the same, the float64 sums are the same as in an uninterrupted run, bit
for bit. A different identity is refused (OUT belongs to another evaluation).
"""
from __future__ import annotations

import dataclasses
import io
import json
import time
from typing import Callable, Optional

import numpy as np

from muse_jax import paths
from muse_jax.evaluation import compositional
from muse_jax.evaluation.clip_score import ClipScoreStats
from muse_jax.evaluation.fid import FeatureStats, Gaussian, fid
from muse_jax.evaluation.inputs import to_uint8
from muse_jax.models.inception import FEATURE_DIM
from muse_jax.progress import format_duration
from muse_jax.sampling.image_io import save_grid

METRICS = ("fid", "clip", "compositional")
STATE_FILE = "state.npz"
GRID_FILE = "grid.png"


@dataclasses.dataclass
class Evaluation:
  """What to evaluate. `inception` and `clip` are scorers (muse_jax.evaluation.scorers) for the
  metrics that need them; `identity` is a JSON-able dict that a resumed run must match."""
  out: str
  captions: list[str]
  metrics: tuple[str, ...]
  batch_size: int
  chunk_size: int
  identity: dict
  inception: object = None
  clip: object = None
  grid: int = 16
  save_images: bool = False


class Accumulators:
  """The streaming statistics of each metric; `arrays()` / `from_arrays` round-trip them."""

  def __init__(self, metrics):
    self.fid = FeatureStats(FEATURE_DIM) if "fid" in metrics else None
    self.clip = ClipScoreStats() if "clip" in metrics else None
    self.comp = (dict.fromkeys(compositional.METRICS + ("num_examples",), 0)
                 if "compositional" in metrics else None)

  def arrays(self) -> dict[str, np.ndarray]:
    out = {}
    if self.fid is not None:
      out.update(fid_count=np.int64(self.fid.count), fid_total=self.fid.total,
                 fid_outer=self.fid.outer)
    if self.clip is not None:
      out.update(clip_count=np.int64(self.clip.count), clip_sum_cosine=self.clip.sum_cosine,
                 clip_sum_clipped=self.clip.sum_clipped)
    if self.comp is not None:
      out.update({f"comp_{k}": np.int64(v) for k, v in self.comp.items()})
    return out

  @classmethod
  def from_arrays(cls, metrics, z) -> "Accumulators":
    acc = cls(metrics)
    if acc.fid is not None:
      acc.fid.count, acc.fid.total, acc.fid.outer = (int(z["fid_count"]), z["fid_total"],
                                                     z["fid_outer"])
    if acc.clip is not None:
      acc.clip.count = int(z["clip_count"])
      acc.clip.sum_cosine = float(z["clip_sum_cosine"])
      acc.clip.sum_clipped = float(z["clip_sum_clipped"])
    if acc.comp is not None:
      acc.comp = {k: int(z[f"comp_{k}"]) for k in acc.comp}
    return acc

  def update(self, ev: Evaluation, images: np.ndarray, captions: list[str], valid: int):
    """Adds the first `valid` rows of a full batch (the networks see the whole batch)."""
    if self.fid is not None:
      self.fid.update(ev.inception.features(images)[:valid])
    if self.clip is not None:
      ev.clip.update(self.clip, images, captions, valid)
    if self.comp is not None:
      counts = compositional.count_correct(images[:valid], captions[:valid])
      for k in self.comp:
        self.comp[k] += counts[k]


def _atomic_write(path: str, write: Callable) -> None:
  """`write(file)` into memory, then muse_jax.paths.write_atomic (local or gs://)."""
  buf = io.BytesIO()
  write(buf)
  paths.write_atomic(path, buf.getvalue())


def identity(ev: Evaluation) -> dict:
  """What a run continuing OUT's state must match: `ev.identity`, the metrics and batching."""
  return {**ev.identity, "metrics": list(ev.metrics), "batch_size": ev.batch_size,
          "chunk_size": ev.chunk_size}


def save_state(ev: Evaluation, acc: Accumulators, done: int) -> None:
  meta = json.dumps({"identity": identity(ev), "done": int(done)}, sort_keys=True)
  _atomic_write(f"{ev.out}/{STATE_FILE}",
                lambda f: np.savez(f, meta=np.array(meta), **acc.arrays()))


def load_state(ev: Evaluation) -> tuple[int, Accumulators]:
  """(images done, statistics) saved in OUT, or (0, empty) when nothing is saved."""
  path = paths.resolve(ev.out) / STATE_FILE
  if not path.exists():
    return 0, Accumulators(ev.metrics)
  with np.load(io.BytesIO(path.read_bytes())) as z:
    meta = json.loads(str(z["meta"]))
    saved, want = meta["identity"], json.loads(json.dumps(identity(ev), sort_keys=True))
    if saved != want:
      keys = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
      raise ValueError(f"{ev.out} holds the progress of another evaluation (it differs in "
                       f"{', '.join(keys)}): give a new --out, or --overwrite to start over")
    acc = Accumulators.from_arrays(ev.metrics, z)
  done, n = int(meta["done"]), len(ev.captions)
  if done > n or (done < n and done % ev.chunk_size):
    raise ValueError(f"{ev.out} holds {done} evaluated images, which does not continue to "
                     f"--num={n} in chunks of {ev.chunk_size}: rerun with --num={done}, a "
                     "new --out, or --overwrite")
  return done, acc


def _save_images(ev: Evaluation, images: np.ndarray, start: int) -> None:
  from PIL import Image
  d = paths.resolve(ev.out) / "images"
  d.mkdir(parents=True, exist_ok=True)
  for i, img in enumerate(images):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    (d / f"{start + i:06d}.png").write_bytes(buf.getvalue())


def run(ev: Evaluation, images_fn: Callable[[list[int]], np.ndarray],
        log: Callable[[str], None] = print, max_chunks: Optional[int] = None):
  """Evaluates the images `images_fn(indices)` (uint8 [len(indices), H, W, 3]) of captions
  0..n-1, continuing from OUT's saved state. Returns the `Accumulators`, or None when it
  stopped after `max_chunks` chunks of this call (the state is saved)."""
  n, bs, cs = len(ev.captions), ev.batch_size, ev.chunk_size
  if bs < 1 or cs < bs or cs % bs:
    raise ValueError(f"--chunk_size={cs} must be a positive multiple of --batch_size={bs}")
  paths.resolve(ev.out).mkdir(parents=True, exist_ok=True)
  done, acc = load_state(ev)
  chunks = -(-n // cs)
  if done:
    log(f"resuming at chunk {done // cs + 1}/{chunks} ({done}/{n} images done, saved in "
        f"{ev.out}/{STATE_FILE})" if done < n else f"all {n} images done already")
  t0, start, grid = time.perf_counter(), done, []
  for c in range(done // cs, chunks):
    if max_chunks is not None and c - start // cs >= max_chunks:
      return None
    for idx, valid in padded_batches(min((c + 1) * cs, n) - c * cs, bs):
      idx = [c * cs + i for i in idx]
      images = images_fn(idx)
      if images.shape[0] != bs:
        raise ValueError(f"images_fn returned {images.shape[0]} images for {bs} indices")
      acc.update(ev, images, [ev.captions[i] for i in idx], valid)
      if ev.save_images:
        _save_images(ev, images[:valid], idx[0])
      if c == 0 and ev.grid:
        grid.extend(images[:valid][:ev.grid - len(grid)])
    if c == 0 and grid:   # before the state: a run past chunk 0 always has its grid
      save_grid(np.stack(grid), f"{ev.out}/{GRID_FILE}", columns=4)
    done = min((c + 1) * cs, n)
    save_state(ev, acc, done)
    rate = (done - start) / max(time.perf_counter() - t0, 1e-9)
    log(f"chunk {c + 1}/{chunks}: {done}/{n} images, {rate:.2f} images/s, ETA "
        f"{format_duration((n - done) / rate)}")
  return acc


def summarize(ev: Evaluation, acc: Accumulators, reference: Optional[Gaussian] = None,
              reference_info: Optional[dict] = None) -> dict:
  """The per-metric results (with counts and the networks used) of finished statistics."""
  out = {}
  if acc.fid is not None:
    r = {"fid": fid(acc.fid, reference), "count": acc.fid.count,
         "reference": {**(reference_info or {}), "count": reference.count},
         "inception": ev.inception.info}
    if ev.inception.info.get("random_weights"):
      r["note"] = ev.inception.info["note"]
    out["fid"] = r
  if acc.clip is not None:
    r = {"clip_score": acc.clip.clip_score(), "mean_cosine": acc.clip.mean_cosine(),
         "count": acc.clip.count, "clip": ev.clip.info,
         "convention": "clip_score = 100 * mean(max(cos, 0)) (torchmetrics); mean_cosine = "
                       "mean(cos) (Muse's 0.32 scale)"}
    if ev.clip.info.get("random_weights"):
      r["note"] = ev.clip.info["note"]
    out["clip"] = r
  if acc.comp is not None:
    out["compositional"] = {**compositional.accuracies(acc.comp), "correct": dict(acc.comp)}
  return out


def padded_batches(n: int, batch_size: int):
  """(indices padded to batch_size with copies of the last, number of real ones) per batch."""
  for b0 in range(0, n, batch_size):
    idx = list(range(b0, min(b0 + batch_size, n)))
    yield idx + [idx[-1]] * (batch_size - len(idx)), len(idx)


def image_stats(images, inception, batch_size: int, log: Callable[[str], None] = print):
  """FID statistics (FeatureStats) of every image of an `inputs.ImageSet` (a reference set)."""
  stats = FeatureStats(FEATURE_DIM)
  t0, n = time.perf_counter(), len(images)
  for i, (idx, valid) in enumerate(padded_batches(n, batch_size)):
    stats.update(inception.features(images.load(idx))[:valid])
    if (i + 1) % 50 == 0 or stats.count == n:
      rate = stats.count / max(time.perf_counter() - t0, 1e-9)
      log(f"reference statistics: {stats.count}/{n} images, {rate:.2f} images/s, ETA "
          f"{format_duration((n - stats.count) / rate)}")
  return stats


def cascade_images(pipe, captions: list[str], seed: int) -> Callable[[list[int]], np.ndarray]:
  """images_fn for `run`: caption i sampled through `pipe` with the key of (seed, i)
  (muse_jax.sampling.per_image), as uint8."""
  from muse_jax.sampling import per_image

  def images_fn(indices):
    keys = per_image.image_keys(seed, indices)
    out = per_image.generate(pipe, [captions[i] for i in indices], keys)
    return to_uint8(out.images, "samples")

  return images_fn


def write_report(out: str, report: dict) -> str:
  """OUT/eval.json, written into a temporary file and renamed."""
  path = f"{out}/eval.json"
  text = json.dumps(report, indent=1, sort_keys=True) + "\n"
  _atomic_write(path, lambda f: f.write(text.encode()))
  return path


def summary_lines(results: dict) -> list[str]:
  """One line per metric for the console, with the random-weights warnings."""
  lines = []
  if "fid" in results:
    r = results["fid"]
    ref = r["reference"].get("count")
    note = "; ".join(x for x in (r.get("note"), r["inception"].get("input_size_note")) if x)
    lines.append(f"FID {r['fid']:.4f} ({r['count']} images vs {ref if ref else '?'} reference"
                 f"{'; ' + note if note else ''})")
  if "clip" in results:
    r = results["clip"]
    lines.append(f"CLIP score {r['clip_score']:.4f} (100 * max(cos, 0); mean cosine "
                 f"{r['mean_cosine']:.4f}; {r['count']} pairs"
                 f"{'; ' + r['note'] if r.get('note') else ''})")
  if "compositional" in results:
    r = results["compositional"]
    lines.append("compositional accuracy: " + ", ".join(
        f"{m} {100 * r[m]:.1f}%" for m in compositional.METRICS)
        + f" ({r['num_examples']} images)")
  return lines
