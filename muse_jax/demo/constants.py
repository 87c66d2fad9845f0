"""Names shared by the demo's modules: its steps, files, splits and guidance modes, and the
log's accuracy line."""

from muse_jax.evaluation.compositional import METRICS

# The demo's steps, in order: its training stages plus precompute, sampling, edits, report.
STEPS = ("tokenizer", "precompute", "base", "sr", "samples", "edits", "report")
STATE_FILE = "demo_state.json"
METRICS_FILE = "metrics.json"
SPLITS = ("train", "heldout")
GUIDANCE = ("cfg", "no_cfg")


def grid_name(split: str, mode: str) -> str:
  """PNG grid of one split's samples: samples_<split>.png (CFG), samples_<split>_no_cfg.png."""
  return f"samples_{split}.png" if mode == "cfg" else f"samples_{split}_{mode}.png"


def acc_line(r: dict) -> str:
  """One log line of an accuracy dict: each attribute and `overall` in percent."""
  return " ".join(f"{k} {100 * r[k]:.1f}%" for k in METRICS)
