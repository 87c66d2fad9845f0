"""A sweep's results: one row per point, from the metrics.jsonl each point's run writes.

Columns: the point's index and overrides, its status (done: a record at the point's
train.num_steps; unfinished: records, but not that far yet; not started: none), the last
logged step, then for the training loss and every eval metric (the `eval_` records) its final
value and its best one. Best is the lowest for a name ending in "loss", the highest for
accuracy and PSNR; other metrics show their final value only. Rows are sorted by the final
eval_loss when any point has one, else by the final training loss; points without it last.
"""
from __future__ import annotations

import csv
import io

from muse_jax.sweeps.points import Point, SweepError
from muse_jax.training.reporting import read_records
from muse_jax.workdir.access import describe

FORMATS = ("text", "csv", "markdown")


def _direction(metric: str) -> int:
  """-1: lower is better, 1: higher is better, 0: no best."""
  if metric.endswith("loss"):
    return -1
  return 1 if ("accuracy" in metric or "psnr" in metric) else 0


def point_row(point: Point) -> dict:
  try:
    records = read_records(point.workdir)
  except Exception as e:  # noqa: BLE001 - OSError, or gcsfs' and google-auth's own types
    raise SweepError(f"cannot read {point.workdir}/metrics.jsonl: {describe(e)}") from None
  row = {"#": point.index, "point": point.label, "workdir": point.workdir}
  last = max((r["step"] for r in records), default=0)
  row["status"] = ("not started" if not records else
                   "done" if last >= point.num_steps else "unfinished")
  row["step"] = f"{last}/{point.num_steps}"
  series: dict[str, list[float]] = {}
  for r in records:
    for k, v in r.items():
      if (k == "loss" or k.startswith("eval_")) and isinstance(v, (int, float)):
        series.setdefault(k, []).append(float(v))
  for k, values in series.items():
    row[k] = values[-1]
    d = _direction(k)
    if d:
      row[f"best {k}"] = min(values) if d < 0 else max(values)
  return row


def table(points: list[Point]) -> tuple[list[str], list[dict]]:
  rows = [point_row(p) for p in points]
  metrics = sorted({k for r in rows for k in r if k == "loss" or k.startswith("eval_")},
                   key=lambda k: (k != "loss", k))
  columns = ["#", "point", "status", "step"]
  for k in metrics:
    columns += [k] + ([f"best {k}"] if _direction(k) else [])
  key = "eval_loss" if "eval_loss" in metrics else "loss"
  rows.sort(key=lambda r: (key not in r, r.get(key, 0.0), r["#"]))
  return columns, rows


def _cell(value) -> str:
  if value is None:
    return "-"
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_table(columns: list[str], rows: list[dict], fmt: str = "text") -> str:
  if fmt == "csv":
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns + ["workdir"])
    for r in rows:
      writer.writerow([r.get(c, "") for c in columns + ["workdir"]])
    return out.getvalue()
  cells = [[_cell(r.get(c)) for c in columns] for r in rows]
  numeric = [c not in ("point", "status") for c in columns]
  if fmt == "markdown":
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"
  widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]

  def line(values):
    return "  ".join(v.rjust(w) if n else v.ljust(w)
                     for v, w, n in zip(values, widths, numeric)).rstrip()
  return "\n".join([line(columns)] + [line(row) for row in cells]) + "\n"
