r"""The demo's sample evaluation re-run on a finished demo workdir, e.g. with FP8 projections,
or with one stage trained anew.

  python benchmarks/sample_quality.py --config=configs/demo_cpu.py --workdir=demo_out \
      --out=/tmp/eval_fp8 --fp8
  python benchmarks/sample_quality.py --config=variant.py --workdir=demo_gpu_out \
      --out=/tmp/wide_base --retrain=base

Links the trained stages of WORKDIR (tokenizer, precompute, base, sr) into OUT, then runs the
demo's `samples` stage there (`muse_jax.demo.evaluate.run_samples`: the detector's accuracy on
train-like and held-out captions, with and without CFG, and the validation captions' choices
when --config has them), with `model.fp8_matmuls` set on the base and SR stages when --fp8 is
given (muse_jax/models/fp8.py). --retrain=base (or sr, or base,sr) trains that stage in OUT
with --config's settings instead of linking it, on WORKDIR's tokenizer and precompute: a
variant of one stage, scored with the other as it was (the SR stage trains on the dataset's
own low-res tokens, not on the base stage's samples, so either can change alone); a stage
retrained with `model.fp8_training` in --config samples without it, as the pipeline's stages
do. --config must make the same tokenizer and precompute as WORKDIR's (its other stage
settings may differ). WORKDIR is only read. Compare with the same command without --fp8 or
--retrain (or with WORKDIR's own metrics.json).
"""
import argparse
import json
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LINKED = ("tokenizer", "precompute", "base", "sr")


def demo_parser(doc: str) -> argparse.ArgumentParser:
  """The flags of a script that reads a finished demo workdir: --config and --workdir; `doc`
  (the script's docstring) gives the description and the epilog of its --help."""
  p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=doc.split("\n\n", 1)[1])
  p.add_argument("--config", required=True, help="the demo config WORKDIR was made with")
  p.add_argument("--workdir", required=True, help="a demo workdir whose training stages are done")
  return p


def main(argv=None):
  p = demo_parser(__doc__)
  p.add_argument("--out", required=True, help="a new directory for this evaluation")
  p.add_argument("--fp8", action="store_true", help="model.fp8_matmuls on base and SR")
  p.add_argument("--retrain", default="", help="comma-separated stages (base, sr) to train "
                 "in OUT with --config's settings instead of linking WORKDIR's")
  args = p.parse_args(argv)
  retrain = [s.strip() for s in args.retrain.split(",") if s.strip()]
  if any(s not in ("base", "sr") for s in retrain):
    p.error(f"--retrain={args.retrain}: use base, sr or base,sr")
  from muse_jax.demo.evaluate import run_samples
  from muse_jax.demo.runner import Demo
  src, out = os.path.abspath(args.workdir), os.path.abspath(args.out)
  missing = [n for n in LINKED if not os.path.isdir(os.path.join(src, n))]
  if missing:
    raise SystemExit(f"{src} has no {', '.join(missing)}: run the demo's training stages first")
  if os.path.exists(os.path.join(out, "demo_state.json")):
    raise SystemExit(f"{out} already holds an evaluation (demo_state.json); pick a new --out")
  os.makedirs(out, exist_ok=True)
  for name in LINKED:
    if name not in retrain and not os.path.exists(os.path.join(out, name)):
      os.symlink(os.path.join(src, name), os.path.join(out, name))
  config = runpy.run_path(args.config)["get_config"]()
  demo = Demo(config, out)
  if retrain:
    demo.write_eval_captions()  # the stages' evaluation during training reads them
  for name in ("base", "sr"):
    if name in retrain:
      demo.train_stage(name)
    with demo.cfgs[name].unlocked():
      demo.cfgs[name].model.fp8_matmuls = bool(args.fp8)
      # A stage retrained with model.fp8_training samples as any trained stage does (the
      # shipped pipeline's sampling never runs the FP8 training dot; --fp8 is the sampler's).
      demo.cfgs[name].model.fp8_training = False
  run_samples(demo)
  result = demo.state["stages"]["samples"]
  print(json.dumps({split: {mode: result[split][mode] for mode in ("cfg", "no_cfg")}
                    for split in ("train", "heldout")}, indent=1))


if __name__ == "__main__":
  main()
