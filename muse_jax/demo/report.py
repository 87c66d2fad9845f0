"""Demo stage 7: WORKDIR/metrics.json from the recorded stages, and the accuracy table."""
from __future__ import annotations

import json
import math
import os
import time

from muse_jax.demo.constants import GUIDANCE, METRICS_FILE, SPLITS, STEPS, grid_name

ATTRIBUTES = ("count", "colour", "shape", "position", "overall")


def write_report(demo) -> dict:
  st = demo.state["stages"]
  samples = st.get("samples", {})
  accuracy, by_objects, by_pair, reference = {}, {}, {}, {}
  for split in SPLITS:
    if split in samples:
      accuracy[split] = {m: samples[split][m] for m in GUIDANCE}
      if all(f"{m}_by_objects" in samples[split] for m in GUIDANCE):
        by_objects[split] = {m: samples[split][f"{m}_by_objects"] for m in GUIDANCE}
      if any(samples[split].get(f"{m}_by_heldout_pair") for m in GUIDANCE):
        by_pair[split] = {m: samples[split][f"{m}_by_heldout_pair"] for m in GUIDANCE}
      reference[split] = {k: samples[split][k] for k in ("dataset_images",
                                                         "tokenizer_reconstructions")}
  metrics = {
      "accuracy": accuracy,
      # The same per number of objects in the caption ('1'..'8', all groups together).
      "accuracy_by_objects": by_objects,
      # The same per held-out colour-shape pair, over the captions that have it (held-out
      # split only: train-split captions have none).
      "accuracy_by_heldout_pair": by_pair,
      "reference": reference,
      # The guidance of the `cfg` rows: the config's, or the one chosen on the validation
      # captions (eval.use_chosen_guidance).
      "guidance_scale": {"base": samples.get("guidance_scale"),
                         "sr": samples.get("sr_guidance_scale"),
                         "chosen_on_validation": samples.get("guidance_chosen_on_validation",
                                                             False)},
      # The sampling temperature of both rows: the config's, or the one chosen on the
      # validation captions (eval.use_chosen_temperature).
      "temperature": {"value": samples.get("temperature"),
                      "chosen_on_validation": samples.get("temperature_chosen_on_validation",
                                                          False)},
      # eval.validation_captions: the config's guidance, none and eval.guidance_sweep scored on
      # train-split captions of their own (`sweep`, keyed '<both>' or '<base>/<sr>',
      # validation.sweep_name), and the best of them (`chosen`); {} when off. Guidance is chosen
      # here, never on the evaluation captions. Then the config's temperature and
      # eval.temperature_sweep at the evaluation's guidance (`temperature_guidance`):
      # `temperature_sweep`, keyed by temperature, and `chosen_temperature`.
      "validation": samples.get("validation", {}),
      "samples": {split: {"grid": grid_name(split, "cfg"),
                          "grid_no_cfg": grid_name(split, "no_cfg"),
                          "grid_captions": samples[split].get("grid_captions", []),
                          "captions": samples[split]["captions"]}
                  for split in SPLITS if split in samples},
      "edits": {k: {**v, "image": f"{k}.png"} for k, v in st.get("edits", {}).items()
                if isinstance(v, dict)},
      "training": {name: {k: v for k, v in st.get(name, {}).items()
                          if k.startswith("loss") or k.startswith("eval") or k == "steps"}
                   for name in ("tokenizer", "base", "sr")},
      # Train against eval (held-out split) loss and token accuracy at each evaluation of
      # the base and SR stages; train values are means over the steps since the previous one.
      "generalisation": {name: gap_curve(demo.path(name, "metrics.jsonl"))
                         for name in ("base", "sr")},
      # The detector's accuracy per caption set and attribute at each evaluation during
      # training (the stages' eval.samples; TensorBoard: eval/compositional/<set>/<attribute>).
      "accuracy_curves": {name: accuracy_curve(demo.path(name, "metrics.jsonl"))
                          for name in ("base", "sr")},
      "stage_seconds": {name: st[name]["seconds"] for name in STEPS if name in st},
      "total_seconds": round(sum(st[name]["seconds"] for name in STEPS if name in st), 2),
      "command": "python -m muse_jax.demo " + " ".join(demo.argv[1:]),
      "stage_commands": {
          "tokenizer": "python -m muse_jax.train --config=<configs.tokenizer> "
                       f"--workdir={demo.path('tokenizer')}",
          "precompute": "python -m muse_jax.precompute --config=<configs.precompute> "
                        f"--workdir={demo.path('precompute')}",
          "base": f"python -m muse_jax.train --config=<configs.base> "
                  f"--workdir={demo.path('base')}",
          "sr": f"python -m muse_jax.train --config=<configs.sr> --workdir={demo.path('sr')}",
      },
      "configs": {"demo": json.loads(demo.config.to_json_best_effort()),
                  **{k: json.loads(v.to_json_best_effort()) for k, v in demo.cfgs.items()}},
  }
  t = time.perf_counter()
  tmp = demo.path(METRICS_FILE + f".tmp-{os.getpid()}")
  with open(tmp, "w") as fh:
    json.dump(metrics, fh, indent=1)
    fh.write("\n")
  os.replace(tmp, demo.path(METRICS_FILE))
  demo.finish("report", time.perf_counter() - t)
  demo.log("report", f"wrote {demo.path(METRICS_FILE)}; stage seconds "
           + ", ".join(f"{k} {v:.0f}" for k, v in metrics["stage_seconds"].items())
           + "\n" + accuracy_table(accuracy, reference, metrics["validation"])
           + "\n" + breakdown_table(by_objects, "all four (count) by objects", "count", int)
           + "\n" + breakdown_table(by_pair, "all four (colour) by held-out pair", "colour")
           + "\n" + gap_table(metrics["generalisation"]))
  return metrics


def gap_curve(path: str) -> list[dict]:
  """One row per evaluation in a stage's metrics.jsonl: step, the mean train loss and token
  accuracy over the steps since the previous evaluation, and the eval loss and accuracy."""
  if not os.path.exists(path):
    return []
  rows, loss, acc = [], [], []
  with open(path) as fh:
    for line in fh:
      rec = json.loads(line) if line.strip() else {}
      if "loss" in rec:
        loss.append(rec["loss"])
        acc.append(rec.get("accuracy", math.nan))
      if "eval_loss" in rec:
        row = {"step": rec["step"], "eval_loss": rec["eval_loss"],
               "eval_accuracy": rec.get("eval_accuracy", math.nan)}
        if loss:
          row.update(train_loss=sum(loss) / len(loss), train_accuracy=sum(acc) / len(acc),
                     train_steps=len(loss))
        rows.append(row)
        loss, acc = [], []
  return rows


def accuracy_curve(path: str) -> list[dict]:
  """One row per evaluation of samples during training in a stage's metrics.jsonl:
  {'step', <set>: {attribute: accuracy}}."""
  if not os.path.exists(path):
    return []
  rows = []
  prefix = "eval/compositional/"
  with open(path) as fh:
    for line in fh:
      rec = json.loads(line) if line.strip() else {}
      row: dict = {}
      for key, value in rec.items():
        if key.startswith(prefix):
          name, attribute = key[len(prefix):].split("/")
          row.setdefault(name, {})[attribute] = value
      if row:
        rows.append({"step": rec["step"], **row})
  return rows


def breakdown_table(by: dict, title: str, attribute: str, key=str) -> str:
  """Percent fully right (and right on `attribute`) per caption group: one row per split and
  guidance, one column per group (`by`: split -> guidance -> group -> accuracy dict), the
  columns sorted by `key`."""
  ns = sorted({n for split in by.values() for r in split.values() for n in r}, key=key)
  width = max([13] + [len(n) + 1 for n in ns])
  head = len(title) + 1
  lines = [f"{title:{head}s}" + "".join(f"{n:>{width}s}" for n in ns)]
  for split, modes in by.items():
    for mode, r in modes.items():
      lines.append(f"{split + ' ' + mode:{head}s}" + "".join(
          f"{100 * r[n]['overall']:6.1f} ({100 * r[n][attribute]:3.0f})".rjust(width)
          if n in r else " " * width for n in ns))
  return "\n".join(lines)


def gap_table(gaps: dict) -> str:
  """Train against eval loss and token accuracy at each evaluation of each stage."""
  lines = [(f"{'stage':6s}{'step':>7s}{'train loss':>12s}{'eval loss':>11s}{'train acc':>11s}"
            f"{'eval acc':>10s}")]
  for name, rows in gaps.items():
    for r in rows:
      lines.append(f"{name:6s}{r['step']:7d}{r.get('train_loss', math.nan):12.4f}"
                   f"{r['eval_loss']:11.4f}{100 * r.get('train_accuracy', math.nan):10.1f}%"
                   f"{100 * r['eval_accuracy']:9.1f}%")
  return "\n".join(lines)


def accuracy_table(accuracy: dict, reference: dict | None = None,
                   validation: dict | None = None) -> str:
  """Percent per attribute: one row per split x guidance, the validation captions' guidance
  and temperature settings (the chosen ones marked) and the tokenizer reconstructions."""
  lines = [f"{'':26s}" + "".join(f"{m:>10s}" for m in ATTRIBUTES)]

  def row(name, r):
    lines.append(f"{name:26s}" + "".join(f"{100 * r[m]:9.1f}%" for m in ATTRIBUTES))
  for split in accuracy:
    for mode in GUIDANCE:
      row(f"{split} {mode}", accuracy[split][mode])
  for name, r in (validation or {}).get("sweep", {}).items():
    row(f"validation {name}" + (" chosen" if name == validation["chosen"] else ""), r)
  chosen_t = (validation or {}).get("chosen_temperature")
  for name, r in (validation or {}).get("temperature_sweep", {}).items():
    row(f"validation t={name}" + (" chosen" if float(name) == chosen_t else ""), r)
  for split in reference or {}:
    row(f"{split} tokenizer recon.", reference[split]["tokenizer_reconstructions"])
  return "\n".join(lines)
