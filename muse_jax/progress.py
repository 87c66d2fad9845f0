"""Progress of long work on the console: durations and a text progress bar."""
from __future__ import annotations

import math


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_bar(done: int, total: int, width: int = 20) -> str:
  frac = min(max(done / max(total, 1), 0.0), 1.0)
  fill = int(round(frac * width))
  return "[" + "#" * fill + "." * (width - fill) + f"] {done}/{total} {100 * frac:5.1f}%"
