"""The runnable config of every demo stage, with the keys that link the stages filled in."""
from __future__ import annotations

import hashlib
import os

import ml_collections

from muse_jax.configs.checks import ConfigError
from muse_jax.data.shapes import dataset as shapes
from muse_jax.demo.constants import SPLITS
from muse_jax.models import t5, vqgan as V

# The caption sets the base and SR stages are evaluated on while they train (their
# eval.samples), one file per split in WORKDIR/eval_captions/, written by the demo (runner.py).
EVAL_SET_NAMES = {"train": "train_like", "heldout": "heldout"}


def eval_captions_file(workdir: str, split: str) -> str:
  return os.path.join(os.path.abspath(workdir), "eval_captions", f"{split}.txt")


def tokenizer_factor(model_cfg) -> int:
  """Downsampling factor (pixels per token side) of a tokenizer `model` section."""
  try:
    return V.VQGANConfig.from_config(model_cfg).downsample_factor
  except ValueError as e:
    raise ConfigError(f"vqgan.{e}") from e


def stage_configs(config, workdir: str) -> dict:
  """The runnable config of every stage, with the keys that link the stages filled in.

  Returns {'tokenizer', 'precompute', 'base', 'sr'}: copies of config.vqgan, .precompute,
  .base, .sr (the demo config is not changed) and 'text_encoder' (the sampling encoder). The
  base and SR stages' eval.samples read the demo's evaluation captions (`eval_captions_file`)
  and sample with the demo's `sampling` settings; eval.samples.every turns them on.
  """
  workdir = os.path.abspath(workdir)
  hi, lo = int(config.image_size), int(config.lowres_size)
  f = tokenizer_factor(config.vqgan.model)
  if hi % f or lo % f or lo > hi:
    raise ConfigError(f"image_size={hi} and lowres_size={lo} must be multiples of the tokenizer's "
                      f"downsampling factor {f}, with lowres_size <= image_size")
  copy = lambda c: ml_collections.ConfigDict(c.to_dict())  # noqa: E731

  vq = copy(config.vqgan)
  vq.seed = int(config.seed)
  vq.data.image_size = hi
  vq.discriminator.image_size = hi
  # The tokenizer learns the scenes that the precompute will tokenize.
  vq.data.shapes.update(shapes.scene_options(config.precompute.data.shapes))

  pre = copy(config.precompute)
  tok_dir = os.path.join(workdir, "tokenizer")
  for name, res in (("tokenizer", lo), ("sr_tokenizer", hi)):
    pre[name].model = copy(vq.model)
    pre[name].weights = tok_dir
    pre[name].resolution = res
  pre.data.shapes.seed = int(config.seed)
  te = pre.text_encoder
  d_model = t5.get_config(te.size).d_model
  codebook = int(vq.model.codebook_size)
  pre_dir = os.path.join(workdir, "precompute")

  out = {"tokenizer": vq, "precompute": pre}
  for name, grid in (("base", lo // f), ("sr", hi // f)):
    c = copy(config[name])
    c.seed = int(config.seed)
    c.model.update(dict(codebook_size=codebook, grid_size=grid, text_dim=d_model,
                        text_length=int(te.max_length)))
    if name == "sr":
      c.model.lowres_grid_size = lo // f
    c.data.update(dict(source="precomputed", path=pre_dir, eval_path=""))
    # Detector accuracy per split during training, sampled as the demo's samples step does
    # (its sampling settings, the tokenizer of the precompute).
    s = c.eval.samples
    s.captions = ",".join(f"{EVAL_SET_NAMES[split]}={eval_captions_file(workdir, split)}"
                          for split in SPLITS)
    s.sampling = copy(config.sampling)
    s.seed = int(config.seed)
    if name == "sr":
      s.base_workdir = os.path.join(workdir, "base")
    out[name] = c
  enc = copy(te)
  enc.spiece_model = os.path.join(pre_dir, "spiece.model")
  out["text_encoder"] = enc
  return out


def fingerprint(cfg) -> str:
  """A short hash of a stage config (demo_state.json warns when a finished stage's differs)."""
  return hashlib.sha256(cfg.to_json_best_effort(sort_keys=True).encode()).hexdigest()[:16]
