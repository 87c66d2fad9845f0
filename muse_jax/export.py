r"""Export a trained stage (vqgan, base or sr) as portable safetensors + config.json, or a
whole sampling cascade as one pipeline bundle.

  python -m muse_jax.export --workdir=WORKDIR --out=DIR [--step=N] [--dtype=float32|bfloat16]
      [--params=auto|ema|raw] [--max_shard_bytes=2GiB] [--overwrite]
  python -m muse_jax.export --pipeline=DIR --base=WORKDIR [--sr=WORKDIR] [--vq_lo=WORKDIR]
      [--vq_hi=WORKDIR] [--spiece_model=FILE] [--text_encoder=reference|weights] [--dtype=...]
      [--params=...] [--max_shard_bytes=...] [--overwrite]

One stage (--workdir, --out): reads WORKDIR/config.json (written by `python -m muse_jax.train`)
to learn the stage and its model, and restores ONLY the parameters of one checkpoint in
WORKDIR/checkpoints (no optimizer state is read). Writes to DIR:
  model.safetensors             every parameter; keys are the parameter tree paths joined with
                                "." (e.g. `stack.blocks.self_attn.qkv.kernel`). Larger than
                                --max_shard_bytes: model-00001-of-0000N.safetensors, ... and
  model.safetensors.index.json  {"metadata": {"total_size": N}, "weight_map": {key: file}}
  config.json                   the stage's full training config (rebuilds the model)
  export.json                   stage, step, params (ema/raw), dtype, parameter count,
                                sha256 of each file, muse_jax version and git commit
Load it with `muse_jax.sampling.loading.load_exported(DIR) -> (config, model_def, params)`,
or point a sampling pipeline stage's workdir at DIR (--config.pipeline.base.workdir=DIR).

A pipeline bundle (--pipeline=DIR): the stages --base, --sr, --vq_lo, --vq_hi name, chained
as `python -m muse_jax.sample --base=...` chains them (the tokenizers, text encoder and
sentencepiece model default to the ones the base stage's precompute used), each exported as
above into DIR/<stage>/, with the sentencepiece model, the text encoder (its settings, or with
--text_encoder=weights its parameters), the sampling defaults (pipeline.json) and manifest.json
(sha256 of every file, each stage's tensor keys and shapes), written last. Sample from it with
`python -m muse_jax.sample --bundle=DIR` or `Pipeline.from_bundle(DIR)`; loading checks every
hash, key and shape. The layout: muse_jax/sampling/bundle.py.

Either is written into DIR.tmp-<pid> and renamed when complete (on a gs:// URL, in place with
export.json / manifest.json last); an existing non-empty DIR is only replaced with --overwrite.
Files are 0644 and directories 0755 under the usual umask.

Exit status: 0 done; 2 bad flags or paths, no workdir / config.json / checkpoint (or no EMA
with --params=ema), unknown stage, a checkpoint that does not match its config, or DIR exists.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from typing import Optional

from absl import app, flags

from muse_jax import paths
from muse_jax.cli import run_or_exit
from muse_jax.configs.cli_flags import parse_flags
from muse_jax.sampling import bundle, chain
from muse_jax.sampling.loading import restore_stage_params
from muse_jax.training import registry
from muse_jax.workdir import checkpoints, export_io, saved_config

flags.DEFINE_string("workdir", None, "The stage's training workdir (holds config.json and "
                    "checkpoints/).")
flags.DEFINE_string("out", None, "Export directory to create.")
flags.DEFINE_string("step", None, "Checkpoint step to export (default: the newest finished).")
flags.DEFINE_string("dtype", "float32", "dtype of the floating parameters in the files: "
                    "float32 (exact) or bfloat16 (half the bytes, rounded to nearest even).")
flags.DEFINE_string("params", "auto", "Which parameters: auto (the EMA when the checkpoint has "
                    "one, else the trained ones), ema (fail without one) or raw (the trained "
                    "ones, never the EMA).")
flags.DEFINE_string("max_shard_bytes", "2GiB", "Largest safetensors file: bytes, or with a "
                    "unit (KB, MB, GB, KiB, MiB, GiB). Larger exports are split into numbered "
                    "files plus model.safetensors.index.json.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing non-empty --out (or --pipeline) "
                     "directory.")
flags.DEFINE_string("pipeline", None, "Write a pipeline bundle of the stages --base, --sr, "
                    "--vq_lo, --vq_hi name into this directory (instead of --workdir/--out).")
chain.define_stage_flags(flags, "With --pipeline: the base stage's training workdir (or "
                         "export).", requires="--pipeline")
flags.DEFINE_enum("text_encoder", "reference", bundle.TEXT_ENCODER_CHOICES, "With --pipeline: "
                  "'reference' stores the text encoder's settings (size and seed of random "
                  "weights, or the weights_path to read where the bundle is loaded); 'weights' "
                  "copies its parameters into the bundle.")
FLAGS = flags.FLAGS

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30}


class ExportError(ValueError):
  """Bad export input: the message is one line saying what to change."""


def parse_bytes(value: str) -> int:
  """'2GiB' / '500MB' / '1048576' -> bytes (> 0)."""
  m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(value))
  unit = m and m.group(2).lower()
  if not m or unit not in _UNITS or int(m.group(1)) <= 0:
    raise ExportError(f"--max_shard_bytes={value!r}: give a positive number of bytes, "
                      "optionally with a unit (e.g. 2GiB, 500MB)")
  return int(m.group(1)) * _UNITS[unit]


def parse_step(value) -> Optional[int]:
  """None / '' -> None (the newest step); else a non-negative integer."""
  if value is None or str(value).strip() == "":
    return None
  text = str(value).strip()
  if not text.isdigit():
    raise ExportError(f"--step={value!r}: give a non-negative checkpoint step")
  return int(text)


def _choice(name: str, value: str, choices) -> str:
  if value not in choices:
    raise ExportError(f"--{name}={value!r}: choose one of {', '.join(choices)}")
  return value


def provenance() -> dict:
  """muse_jax's version and the git commit of its checkout (None when unavailable)."""
  from importlib import metadata
  try:
    version = metadata.version("muse_jax")
  except metadata.PackageNotFoundError:
    version = None
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  commit = dirty = None
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip() or None
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=repo, capture_output=True, text=True, timeout=10,
                                check=True).stdout.strip())
  except (OSError, subprocess.SubprocessError):
    pass
  return {"muse_jax_version": version, "git_commit": commit, "git_dirty": dirty}


def export_stage(workdir: str, out: str, *, step=None, dtype: str = "float32",
                 params: str = "auto", max_shard_bytes=2 << 30,
                 overwrite: bool = False) -> dict:
  """Exports one checkpoint of a training workdir to `out`; returns export.json's content.

  Arguments are the flags'; `step` may be an int, a digit string or None (the newest).
  Raises ExportError (bad arguments, unknown stage), FileNotFoundError / MissingCheckpoint
  (no workdir, config.json or checkpoint) or ExportExists (non-empty `out`).
  """
  if not workdir or not out:
    raise ExportError("give both --workdir=WORKDIR (a training workdir) and --out=DIR")
  step = parse_step(step)
  dtype = _choice("dtype", dtype, tuple(export_io.DTYPES))
  params = _choice("params", params, checkpoints.PARAM_CHOICES)
  if not isinstance(max_shard_bytes, int):
    max_shard_bytes = parse_bytes(max_shard_bytes)
  if not paths.resolve(workdir).is_dir():
    raise FileNotFoundError(f"--workdir={workdir}: no such directory")
  src, dst = str(paths.resolve(workdir)), str(paths.resolve(out)).rstrip("/")
  if src == dst or src.startswith(dst + "/"):
    raise ExportError(f"--out={out} is or contains --workdir={workdir}; choose another --out")
  export_io.check_target(dst, overwrite)
  config = saved_config.load_saved_config(workdir)
  stage = config.get("stage")
  if stage not in registry.STAGES:
    raise ExportError(f"{workdir}/config.json has stage={stage!r}; export knows "
                      f"{', '.join(registry.STAGES)}")
  tree, step, source = restore_stage_params(config, workdir, step=step, which=params,
                                            name=stage)
  info = {"stage": stage, "step": int(step), "params": source,
          "source_workdir": src, **provenance()}
  return export_io.write_export(out, tree, saved_config.saved_config(workdir), info, dtype=dtype,
                                max_shard_bytes=max_shard_bytes, overwrite=overwrite)


def export_pipeline(out: str, base: str, *, sr: str = "", vq_lo: str = "", vq_hi: str = "",
                    spiece_model: str = "", text_encoder: str = "reference", dtype="float32",
                    params: str = "auto", max_shard_bytes=2 << 30,
                    overwrite: bool = False) -> dict:
  """Writes the pipeline bundle of these stage workdirs to `out`; returns its manifest.

  Arguments are the flags'. Raises ExportError (bad arguments), FileNotFoundError (a path
  that does not exist, no config.json), MissingCheckpoint or ExportExists (non-empty `out`).
  """
  if not out or not base:
    raise ExportError("give --pipeline=DIR and --base=WORKDIR (the base stage's workdir)")
  dtype = _choice("dtype", dtype, tuple(export_io.DTYPES))
  params = _choice("params", params, checkpoints.PARAM_CHOICES)
  if not isinstance(max_shard_bytes, int):
    max_shard_bytes = parse_bytes(max_shard_bytes)
  chain.check_paths(base=base, sr=sr, vq_lo=vq_lo, vq_hi=vq_hi, spiece_model=spiece_model)
  dst = str(paths.resolve(out)).rstrip("/")
  for flag, workdir in (("base", base), ("sr", sr), ("vq_lo", vq_lo), ("vq_hi", vq_hi)):
    src = str(paths.resolve(workdir)) if workdir else ""
    if src and (src == dst or src.startswith(dst + "/")):
      raise ExportError(f"--pipeline={out} is or contains --{flag}={workdir}; choose another "
                        "--pipeline")
  export_io.check_target(dst, overwrite)
  config = chain.pipeline_config(base, sr=sr, vq_lo=vq_lo, vq_hi=vq_hi,
                                 spiece_model=spiece_model)
  return bundle.write_bundle(out, config, text_encoder=text_encoder, params=params, dtype=dtype,
                             max_shard_bytes=max_shard_bytes, overwrite=overwrite,
                             info=provenance())


def _run_pipeline_export():
  for name in ("workdir", "out", "step"):
    if getattr(FLAGS, name) is not None:
      raise ExportError(f"--{name} is for a single-stage export; a --pipeline bundle takes "
                        "each stage's newest checkpoint from --base, --sr, --vq_lo, --vq_hi")
  manifest = export_pipeline(FLAGS.pipeline, FLAGS.base, sr=FLAGS.sr, vq_lo=FLAGS.vq_lo,
                             vq_hi=FLAGS.vq_hi, spiece_model=FLAGS.spiece_model,
                             text_encoder=FLAGS.text_encoder, dtype=FLAGS.dtype,
                             params=FLAGS.params, max_shard_bytes=FLAGS.max_shard_bytes,
                             overwrite=FLAGS.overwrite)
  stages = ", ".join(f"{name} step {s['step']}" for name, s in manifest["stages"].items()
                     if "step" in s)
  print(f"exported the pipeline bundle ({stages}; text encoder: "
        f"{manifest['stages'][bundle.TEXT_ENCODER]['weights']}; {len(manifest['files'])} "
        f"files) to {paths.resolve(FLAGS.pipeline)}")


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
    sys.exit(2)
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every file at INFO

  def run():
    if FLAGS.pipeline is not None:
      return _run_pipeline_export()
    for name in ("base", "sr", "vq_lo", "vq_hi", "spiece_model"):
      if getattr(FLAGS, name):
        raise ExportError(f"--{name} is for a pipeline bundle: give --pipeline=DIR too")
    info = export_stage(FLAGS.workdir, FLAGS.out, step=FLAGS.step, dtype=FLAGS.dtype,
                        params=FLAGS.params, max_shard_bytes=FLAGS.max_shard_bytes,
                        overwrite=FLAGS.overwrite)
    weights = [f for f in info["files"] if f.endswith(".safetensors")]
    print(f"exported {info['stage']} step {info['step']} ({info['params']} params, "
          f"{info['dtype']}, {info['parameter_count']:,} parameters, {len(weights)} "
          f"safetensors file{'s' if len(weights) != 1 else ''}) to {paths.resolve(FLAGS.out)}")

  # ValueError: also a checkpoint whose parameters do not match its config.json.
  run_or_exit(run, user_errors=(ValueError, FileNotFoundError, FileExistsError))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
