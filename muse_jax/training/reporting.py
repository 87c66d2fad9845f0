"""Where training metrics go: the console (progress bar, rates, ETA), a JSONL log of every
step's scalars (`workdir/metrics.jsonl`, the record resume tests compare) and TensorBoard
(`workdir/tensorboard`, through tensorboardX when installed). Only process 0 writes.

On a gs:// workdir, whose objects cannot be appended to, metrics.jsonl is held in memory and
the object rewritten at most every URL_FLUSH_SECONDS and at the end (as tensorboardX's own
gs:// writer does with its event file, every `flush_secs`): a run killed without its exit
path loses at most that much of the log; the checkpoints are unaffected.
"""
from __future__ import annotations

import contextlib
import json
import logging
import sys
import time

import numpy as np

from muse_jax import paths
from muse_jax.progress import format_duration, progress_bar
from muse_jax.workdir.access import WorkdirWriteError, describe

log = logging.getLogger(__name__)
URL_FLUSH_SECONDS = 30.0


def _record(line: bytes) -> dict | None:
  """The record a metrics.jsonl line holds, or None when it is not a JSON object with a step."""
  try:
    rec = json.loads(line)
  except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
    return None
  if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
    return None
  return rec


def read_records(workdir: str) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl, oldest first; [] before the run's first record.
  Lines that are not whole records (the last line of a run that is still writing it, or one
  torn by a crash) are left out."""
  path = paths.resolve(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [r for r in map(_record, path.read_bytes().split(b"\n")) if r is not None]


class Reporter:
  def __init__(self, workdir: str, *, total_steps: int, start_step: int, enabled: bool,
               tensorboard: bool, stream=None):
    self.enabled = enabled
    self.total, self.start = total_steps, start_step
    self.stream = stream or sys.stdout
    self.t_start = time.perf_counter()
    self.t_last, self.step_last = self.t_start, start_step
    self._paused = 0.0  # seconds of the current interval spent in `paused()` blocks
    self._pause_depth = 0
    self._jsonl = None
    self._lines: list[bytes] | None = None  # a URL workdir's whole log, rewritten on flush
    self._tb = None
    if not enabled:
      return
    workdir = paths.resolve(workdir)
    self._path = workdir / "metrics.jsonl"
    kept = self._truncate_after(self._path, start_step)
    if paths.is_url(workdir):
      self._lines, self._uploaded = kept, time.monotonic()
    else:
      self._jsonl = open(self._path, "a")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # writes gs:// itself (google-cloud-storage)
        self._tb = SummaryWriter(str(workdir / "tensorboard"))
      except ImportError:
        log.warning("tensorboardX is not installed: TensorBoard logging is off "
                    "(pip install tensorboardX)")

  @staticmethod
  def _truncate_after(path, step: int) -> list[bytes]:
    """Drop records past the restored step: a resumed run re-logs them exactly.

    The log must never block a resume (the checkpoint, not this file, is the run's state), so
    lines that are not whole records are dropped with one warning instead of failing:
    - a torn last line (a crash or a full disk mid-append): a record is one write ending in a
      newline, and no strict prefix of a JSON object parses, so a last line that is not JSON
      is torn, and one that parses has lost at most its newline and is kept;
    - a bad line in the middle (not a JSON object with a step, e.g. a block of NUL bytes left
      by a crash on some filesystems): the records around it are still good, so only it goes.
    Dropped lines are appended to `metrics.jsonl.dropped`, so nothing is lost silently. The
    file is rewritten through a temporary name, so a crash here leaves the old one whole.
    Returns the lines kept.
    """
    if not path.exists():
      return []
    lines = [(n, line) for n, line in enumerate(path.read_bytes().split(b"\n"), 1)
             if line.strip()]
    keep, bad = [], []
    for n, line in lines:
      rec = _record(line)
      if rec is None:
        bad.append((n, line))
      elif rec["step"] <= step:
        keep.append(line)
    if bad:
      dropped = path.parent / (path.name + ".dropped")
      old = dropped.read_bytes() if dropped.exists() else b""
      paths.write_atomic(dropped, old + b"".join(line + b"\n" for _, line in bad))
      where = [f"line {n}" + (" (the last)" if n == lines[-1][0] else "") for n, _ in bad]
      where = ", ".join(where[:5] + (["..."] if len(where) > 5 else []))
      log.warning("%s: dropped %d line(s) that are not whole records (%s), saved to %s.dropped",
                  path, len(bad), where, path.name)
    paths.write_atomic(path, b"".join(line + b"\n" for line in keep))
    return keep

  def record(self, step: int, metrics: dict, prefix: str = ""):
    """Every step's scalars to the JSONL log."""
    if not self.enabled:
      return
    rec = {"step": step, **{prefix + k: float(v) for k, v in metrics.items()}}
    if self._lines is not None:
      self._lines.append(json.dumps(rec).encode())
      if time.monotonic() - self._uploaded >= URL_FLUSH_SECONDS:
        self._upload()
      return
    try:
      self._jsonl.write(json.dumps(rec) + "\n")
      self._jsonl.flush()
    except OSError as e:
      raise WorkdirWriteError(f"could not write {self._path}: {describe(e)}") from None

  def _upload(self):
    """Rewrites a URL workdir's metrics.jsonl object with every record so far."""
    try:
      paths.write_atomic(self._path, b"".join(line + b"\n" for line in self._lines))
    except Exception as e:  # gcsfs and google-auth raise their own types
      raise WorkdirWriteError(f"could not write {self._path}: {describe(e)}") from None
    self._uploaded = time.monotonic()

  def scalars(self, step: int, metrics: dict, prefix: str = ""):
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(prefix + k, float(v), step)

  def images(self, step: int, name: str, grid: np.ndarray):
    """An HxWx3 float image in [0, 1] to TensorBoard."""
    if self._tb is not None:
      self._tb.add_image(name, np.clip(grid, 0, 1), step, dataformats="HWC")

  def reset_timer(self, step: int) -> float:
    """Restart the rate clock at `step`; returns the seconds since the last reset."""
    now = time.perf_counter()
    elapsed = now - self.t_last
    self.t_last, self.step_last, self._paused = now, step, 0.0
    return elapsed

  @contextlib.contextmanager
  def paused(self):
    """Leaves the time spent inside out of the next progress line's rates and ETA, which are
    to measure training steps only (evaluation, hooks, image grids and checkpoint saves run
    in here). With asynchronous dispatch the caller first waits for the steps it dispatched,
    or their device time would be left out too. Nested blocks count once."""
    self._pause_depth += 1
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self._pause_depth -= 1
      if not self._pause_depth:
        self._paused += time.perf_counter() - t0

  def console(self, step: int, metrics: dict, *, examples_per_step: int, flops_per_step: float,
              peak_flops: float):
    """One progress line with rates over the training time since the previous line (time in
    `paused()` blocks left out); returns the rates."""
    now = time.perf_counter()
    steps = step - self.step_last
    dt = max(now - self.t_last - self._paused, 1e-9)
    rates = {"steps_per_sec": steps / dt, "examples_per_sec": steps * examples_per_step / dt}
    if peak_flops > 0 and flops_per_step > 0:
      rates["mfu"] = rates["steps_per_sec"] * flops_per_step / peak_flops
    self.t_last, self.step_last, self._paused = now, step, 0.0
    if self.enabled:
      remaining = (self.total - step) / rates["steps_per_sec"] if steps else float("nan")
      parts = [progress_bar(step, self.total)]
      parts += [f"{k} {float(v):.4g}" for k, v in metrics.items()]
      parts.append(f"{rates['steps_per_sec']:.3g} steps/s")
      parts.append(f"{rates['examples_per_sec']:.4g} ex/s")
      if "mfu" in rates:
        parts.append(f"MFU {100 * rates['mfu']:.1f}%")
      parts.append(f"ETA {format_duration(remaining)}")
      print(" | ".join(parts), file=self.stream, flush=True)
      self.scalars(step, rates, prefix="perf/")
    return rates

  def message(self, text: str):
    if self.enabled:
      print(text, file=self.stream, flush=True)

  def close(self):
    if self._lines is not None:
      try:
        self._upload()
      except WorkdirWriteError as e:  # the run's own error or exit status is the one to keep
        log.warning("%s", e)
    if self._jsonl is not None:
      try:
        self._jsonl.close()
      except OSError:  # a failed flush was reported by `record`
        pass
    if self._tb is not None:
      self._tb.close()
