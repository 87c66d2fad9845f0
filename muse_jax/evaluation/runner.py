"""The resumable evaluation loop: images in chunks, streaming statistics saved after each chunk.

  acc = run(Evaluation(...), images_fn, log=print)       # None if stopped early (max_chunks)
  report = summarize(evaluation, acc, reference)          # the report's metrics (process 0)

Images 0..n-1 are processed in chunks of `chunk_size` (a multiple of `batch_size`); every batch
has `batch_size` rows (the last one padded with copies of its last image, whose results are
dropped), so each network compiles once. After each chunk the statistics of every metric
(`Accumulators`: FID's float64 FeatureStats sums, the CLIP score sums, the compositional
counts) and the number of images done go to OUT/state/<step>.npz, written to a temporary file
and renamed, so the file always holds a finished chunk. A rerun with the same `identity`
(captions, source, networks, batch and chunk size...) continues after the last saved chunk;
since batches and their order are the same, the float64 sums are the same as in an
uninterrupted run, bit for bit. A different identity is refused (OUT belongs to another
evaluation).

Everything a run writes is kept per `step` (the checkpoint step evaluated), so the checkpoints
of one training run can be evaluated into one OUT: OUT/state/<step>.npz, OUT/grid/<step>.png,
OUT/images/<step>/ and the report OUT/eval/<step>.json; an evaluation of another step neither
continues nor overwrites this one's.

Several devices and processes (`devices`): each process takes its equal, contiguous part of
every batch (`devices.process_rows`), makes its images (`images_fn` gets only those indices)
and runs the networks on them, split over its devices; the per-image results (`batch_rows`:
Inception features, CLIP embeddings, compositional hits) of the whole batch are gathered on
every process and process 0 adds them to the statistics in caption order, as one process
would. Caption i's image tokens do not depend on where they are computed, its pixels and
network outputs only in float round-off (XLA may sum in another order for another per-device
batch shape), so the statistics equal a one-device run's to round-off; the saved state holds
nothing per process, so a run can resume with another number of processes or devices.
Process 0 alone reads and writes OUT's state, grid and report (`--save_images`: each process
writes its own images).
"""
from __future__ import annotations

import dataclasses
import io
import json
import time
from typing import Callable, Optional

import jax
import numpy as np

from muse_jax import paths
from muse_jax.evaluation import compositional, devices
from muse_jax.evaluation.clip_score import ClipScoreStats
from muse_jax.evaluation.fid import FeatureStats, Gaussian, fid
from muse_jax.evaluation.inputs import to_uint8
from muse_jax.models.inception import FEATURE_DIM
from muse_jax.progress import format_duration
from muse_jax.sampling.image_io import save_grid

METRICS = ("fid", "clip", "compositional")


def state_path(out: str, step: int) -> str:
  return f"{out}/state/{int(step)}.npz"


def grid_path(out: str, step: int) -> str:
  return f"{out}/grid/{int(step)}.png"


def report_path(out: str, step: int) -> str:
  return f"{out}/eval/{int(step)}.json"


@dataclasses.dataclass
class Evaluation:
  """What to evaluate. `inception` and `clip` are scorers (muse_jax.evaluation.scorers) for the
  metrics that need them; `identity` is a JSON-able dict that a resumed run must match; `step`
  (the checkpoint step evaluated) names the state, grid, images and report in `out`."""
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
  step: int = 0


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
    """Adds the first `valid` rows of a whole batch of images, scored in this process."""
    self.add(batch_rows(ev, images, captions), valid)

  def add(self, rows: dict[str, np.ndarray], valid: int):
    """Adds the first `valid` rows of a whole batch's `batch_rows`, in order."""
    if self.fid is not None:
      self.fid.update(rows["fid"][:valid])
    if self.clip is not None:
      self.clip.update(rows["clip_image"][:valid], rows["clip_text"][:valid])
    if self.comp is not None:
      hits = rows["comp"][:valid].sum(axis=0)
      for k, h in zip(COMP_KEYS, hits):
        self.comp[k] += int(h)


COMP_KEYS = compositional.METRICS + ("num_examples",)


def batch_rows(ev: Evaluation, images: np.ndarray, captions: list[str]) -> dict:
  """The per-image results that `Accumulators.add` sums, of every row of `images` (the
  networks always see a whole batch part, so they compile once): Inception features, CLIP
  image and caption embeddings (float32), compositional hits per attribute (int32, 0/1)."""
  rows = {}
  if "fid" in ev.metrics:
    rows["fid"] = np.asarray(ev.inception.features(images), np.float32)
  if "clip" in ev.metrics:
    img, txt = ev.clip.embed(images, captions)
    rows["clip_image"], rows["clip_text"] = (np.asarray(x, np.float32) for x in (img, txt))
  if "compositional" in ev.metrics:
    rows["comp"] = np.array([[compositional.count_correct([im], [c])[k] for k in COMP_KEYS]
                             for im, c in zip(images, captions)], np.int32)
  return rows


def _atomic_write(path: str, write: Callable) -> None:
  """`write(file)` into memory, then muse_jax.paths.write_atomic (local or gs://) into `path`'s
  folder, made if missing."""
  paths.resolve(path).parent.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  write(buf)
  paths.write_atomic(path, buf.getvalue())


def identity(ev: Evaluation) -> dict:
  """What a run continuing OUT's state must match: `ev.identity`, the step, the metrics and
  batching."""
  return {**ev.identity, "step": int(ev.step), "metrics": list(ev.metrics),
          "batch_size": ev.batch_size, "chunk_size": ev.chunk_size}


def save_state(ev: Evaluation, acc: Accumulators, done: int) -> None:
  meta = json.dumps({"identity": identity(ev), "done": int(done)}, sort_keys=True)
  _atomic_write(state_path(ev.out, ev.step),
                lambda f: np.savez(f, meta=np.array(meta), **acc.arrays()))


def load_state(ev: Evaluation) -> tuple[int, Accumulators]:
  """(images done, statistics) saved in OUT for `ev.step`, or (0, empty) when nothing is."""
  path = paths.resolve(state_path(ev.out, ev.step))
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


def _save_images(ev: Evaluation, images: np.ndarray, indices: list[int]) -> None:
  from PIL import Image
  d = paths.resolve(ev.out) / "images" / str(int(ev.step))
  d.mkdir(parents=True, exist_ok=True)
  for i, img in zip(indices, images):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    (d / f"{i:06d}.png").write_bytes(buf.getvalue())


def _start(ev: Evaluation) -> tuple[int, Optional[Accumulators]]:
  """(images done, statistics): read by process 0, the count broadcast to the others (whose
  statistics are None); a refused state fails every process."""
  done, acc, error = -1, None, ""
  if devices.is_main():
    try:
      done, acc = load_state(ev)
    except ValueError as e:
      error = str(e)
  done = devices.broadcast(done)
  if done < 0:
    raise ValueError(error or f"process 0 refused {ev.out}'s saved state (see its error)")
  return done, acc


def run(ev: Evaluation, images_fn: Callable[[list[int]], np.ndarray],
        log: Callable[[str], None] = print, max_chunks: Optional[int] = None):
  """Evaluates the images `images_fn(indices)` (uint8 [len(indices), H, W, 3]) of captions
  0..n-1, continuing from OUT's saved state; `indices` are this process's part of a batch.
  Returns the `Accumulators` (on processes other than 0: None), or None on every process
  when it stopped after `max_chunks` chunks of this call (the state is saved)."""
  n, bs, cs = len(ev.captions), ev.batch_size, ev.chunk_size
  if bs < 1 or cs < bs or cs % bs:
    raise ValueError(f"--chunk_size={cs} must be a positive multiple of --batch_size={bs}")
  main = devices.is_main()
  if main:
    paths.resolve(ev.out).mkdir(parents=True, exist_ok=True)
  else:
    log = lambda s: None  # noqa: E731 (process 0 reports)
  done, acc = _start(ev)
  chunks = -(-n // cs)
  if done:
    log(f"resuming at chunk {done // cs + 1}/{chunks} ({done}/{n} images done, saved in "
        f"{state_path(ev.out, ev.step)})" if done < n else f"all {n} images done already")
  t0, start, grid = time.perf_counter(), done, []
  # A finished run (done == n, not always a chunk boundary) has nothing left to add.
  for c in range(chunks if done >= n else done // cs, chunks):
    if max_chunks is not None and c - start // cs >= max_chunks:
      return None
    for idx, valid in padded_batches(min((c + 1) * cs, n) - c * cs, bs):
      idx = [c * cs + i for i in idx]
      mine = devices.process_rows(idx)
      images = images_fn(mine)
      if images.shape[0] != len(mine):
        raise ValueError(f"images_fn returned {images.shape[0]} images for {len(mine)} "
                         "indices")
      rows = devices.gather(batch_rows(ev, images, [ev.captions[i] for i in mine]))
      first = jax.process_index() * len(mine)   # this part's position in the batch
      if ev.save_images and first < valid:
        _save_images(ev, images[:valid - first], mine[:valid - first])
      if c == 0 and len(grid) < ev.grid:
        grid.extend(devices.gather({"x": images})["x"][:valid][:ev.grid - len(grid)])
      if main:
        acc.add(rows, valid)
    if main and c == 0 and grid:   # before the state: a run past chunk 0 always has its grid
      paths.resolve(grid_path(ev.out, ev.step)).parent.mkdir(parents=True, exist_ok=True)
      save_grid(np.stack(grid), grid_path(ev.out, ev.step), columns=4)
    done = min((c + 1) * cs, n)
    if main:
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
  stats = FeatureStats(FEATURE_DIM)   # every process computes all of them
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


def write_report(out: str, step: int, report: dict) -> str:
  """OUT/eval/<step>.json, written into a temporary file and renamed."""
  path = report_path(out, step)
  text = json.dumps(report, indent=1, sort_keys=True) + "\n"
  _atomic_write(path, lambda f: f.write(text.encode()))
  return path


def scalars(results: dict) -> dict[str, float]:
  """The headline figures of `summarize`'s results, by TensorBoard tag (fid/fid, ...)."""
  out = {}
  if "fid" in results:
    out["fid/fid"] = results["fid"]["fid"]
  if "clip" in results:
    out["clip/clip_score"] = results["clip"]["clip_score"]
    out["clip/mean_cosine"] = results["clip"]["mean_cosine"]
  if "compositional" in results:
    out.update({f"compositional/{m}": results["compositional"][m]
                for m in compositional.METRICS})
  return out


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
