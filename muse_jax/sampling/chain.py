"""A sampling config from trained stage workdirs, with no config file to write.

Each stage workdir holds the config.json its trainer saved, so a pipeline stage needs only its
workdir. The rest follows the chain the base stage was trained on: its `data.path` is a
precompute output whose manifest.json names the text encoder (and the sentencepiece model) the
embeddings were made with and the VQ tokenizer workdirs of the low- and high-res tokens.

  config = pipeline_config(base="runs/base", sr="runs/sr")
  pipe = Pipeline.from_config(config)              # or Pipeline.from_workdirs(...)

Anything given explicitly (a tokenizer workdir, a sentencepiece model) wins over the chain.
"""
from __future__ import annotations

import os

import ml_collections

from muse_jax import paths
from muse_jax.configs import common_pipeline
from muse_jax.data.manifest import read_manifest
from muse_jax.workdir.saved_config import CONFIG_FILE as SAVED_CONFIG, load_saved_config


def _trained(workdir: str, stage: str, flag: str):
  config = load_saved_config(workdir)
  if config.get("stage") != stage:
    raise ValueError(f"--{flag}={workdir} is a {config.get('stage')!r} workdir; give the "
                     f"workdir of a trained {stage} stage")
  return config


def _precompute_manifest(base_config, base: str) -> tuple[str, dict]:
  """(precompute dir, manifest) of the shards the base stage trained on."""
  data = base_config.data
  if data.source != "precomputed" or not data.path:
    raise ValueError(f"{base} was trained on data.source={data.source!r}, not on precomputed "
                     "shards, so no text encoder is known for it: sample it with a --config "
                     "that names one (e.g. configs/pipeline_tiny.py)")
  return str(data.path), read_manifest(str(data.path))


def _tokenizer(manifest: dict, key: str, flag: str, pre_dir: str) -> str:
  weights = ((manifest.get("models") or {}).get(key) or {}).get("weights", "")
  if not weights:
    raise ValueError(f"the precompute in {pre_dir} used a randomly initialised {key} "
                     f"({key}.weights=''), which no workdir holds: give --{flag}")
  return str(weights)


def define_stage_flags(flags, base_help: str, requires: str = "--base") -> None:
  """Defines --base, --sr, --vq_lo, --vq_hi and --spiece_model, the stage workdirs that
  `pipeline_config` chains, on absl `flags` (every entry point that samples or bundles them
  names them alike). `requires`: the flag the other four go with."""
  flags.DEFINE_string("base", None if requires == "--base" else "", base_help)
  flags.DEFINE_string("sr", "", f"With {requires}: the SR stage's workdir ('' = base only).")
  flags.DEFINE_string("vq_lo", "", f"With {requires}: the low-res tokenizer's workdir, export or "
                      "diffusers VQModel (default: the one the base stage's precompute used).")
  flags.DEFINE_string("vq_hi", "", f"With {requires} and --sr: the high-res tokenizer (default: "
                      "the one the precompute used for the SR tokens).")
  flags.DEFINE_string("spiece_model", "", f"With {requires}: the text tokenizer (default: the "
                      "precompute's).")


def check_paths(**flags: str) -> None:
  """FileNotFoundError naming the first flag (--name=path) whose path does not exist; empty
  values are skipped."""
  for flag, path in flags.items():
    if path and not paths.resolve(path).exists():
      what = "file" if flag == "spiece_model" else "directory"
      raise FileNotFoundError(f"--{flag}={path}: no such {what}")


def pipeline_config(base: str, *, sr: str = "", vq_lo: str = "", vq_hi: str = "",
                    spiece_model: str = "") -> ml_collections.ConfigDict:
  """A sampling config (muse_jax/configs/common_pipeline.py) whose stages are these workdirs.

  Args:
    base: the base stage's training workdir (or export).
    sr: the SR stage's workdir; '' samples the base stage only.
    vq_lo, vq_hi: tokenizer workdirs (or diffusers VQModels); '' = the ones base's precompute
      used (vq_hi only with sr).
    spiece_model: the text tokenizer; '' = the one base's precompute used. The text encoder
      itself is always the precompute's: the base stage learned its embeddings.
  """
  base_config = _trained(base, "base", "base")
  if sr:
    _trained(sr, "sr", "sr")
  c = common_pipeline.get_config()
  p = c.pipeline
  # The text encoder must be the one the base stage's embeddings were precomputed with.
  pre_dir, manifest = _precompute_manifest(base_config, base)
  p.text_encoder = ml_collections.ConfigDict(manifest["config"]["text_encoder"])
  trained_spiece = os.path.join(pre_dir, "spiece.model")
  if not p.text_encoder.spiece_model and paths.resolve(trained_spiece).is_file():
    p.text_encoder.spiece_model = trained_spiece
  if spiece_model:
    p.text_encoder.spiece_model = spiece_model
  vq_lo = vq_lo or _tokenizer(manifest, "tokenizer", "vq_lo", pre_dir)
  vq_hi = (vq_hi or _tokenizer(manifest, "sr_tokenizer", "vq_hi", pre_dir)) if sr else ""
  for name, workdir in (("base", base), ("sr", sr), ("vq_lo", vq_lo), ("vq_hi", vq_hi)):
    # Each stage's config is its workdir's config.json ('' leaves the stage out).
    saved = os.path.join(workdir, SAVED_CONFIG) if workdir else ""
    p[name] = common_pipeline.stage_section(saved, workdir)
  return c
