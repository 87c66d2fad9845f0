"""Demo stage 7: WORKDIR/metrics.json from the recorded stages, and the accuracy table."""
from __future__ import annotations

import json
import os
import time

from muse_jax.demo.constants import GUIDANCE, METRICS_FILE, SPLITS, STEPS, grid_name

ATTRIBUTES = ("count", "colour", "shape", "position", "overall")


def write_report(demo) -> dict:
  st = demo.state["stages"]
  samples = st.get("samples", {})
  accuracy, reference = {}, {}
  for split in SPLITS:
    if split in samples:
      accuracy[split] = {m: samples[split][m] for m in GUIDANCE}
      reference[split] = {k: samples[split][k] for k in ("dataset_images",
                                                         "tokenizer_reconstructions")}
  metrics = {
      "accuracy": accuracy,
      "reference": reference,
      "guidance_scale": {"base": samples.get("guidance_scale"),
                         "sr": samples.get("sr_guidance_scale")},
      # eval.guidance_sweep: accuracy at further guidance scales, keyed '<both>' or
      # '<base>/<sr>' (evaluate.sweep_name).
      "guidance_sweep": {split: samples[split]["guidance_sweep"] for split in SPLITS
                         if "guidance_sweep" in samples.get(split, {})},
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
           + "\n" + accuracy_table(accuracy, reference, metrics["guidance_sweep"]))
  return metrics


def accuracy_table(accuracy: dict, reference: dict | None = None,
                   sweep: dict | None = None) -> str:
  """Percent per attribute: one row per split x guidance (and tokenizer reconstructions)."""
  lines = [f"{'':26s}" + "".join(f"{m:>10s}" for m in ATTRIBUTES)]

  def row(name, r):
    lines.append(f"{name:26s}" + "".join(f"{100 * r[m]:9.1f}%" for m in ATTRIBUTES))
  for split in accuracy:
    for mode in GUIDANCE:
      row(f"{split} {mode}", accuracy[split][mode])
    for scale, r in (sweep or {}).get(split, {}).items():
      row(f"{split} guidance {scale}", r)
  for split in reference or {}:
    row(f"{split} tokenizer recon.", reference[split]["tokenizer_reconstructions"])
  return "\n".join(lines)
