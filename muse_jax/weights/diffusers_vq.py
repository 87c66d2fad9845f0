"""Load a diffusers `VQModel` (e.g. the open aMUSEd tokenizer) into `muse_jax.models.vqgan`.

Reads `diffusion_pytorch_model.safetensors` only (never pickles). The architecture comes from the
model's `config.json` (`vqgan_config_from_diffusers`) or from a muse_jax config; every key the
model expects must be in the file with the right shape, and every key in the file must be used:
otherwise a `WeightsError` names all missing, unexpected and misshapen keys.

Key mapping (muse_jax path -> diffusers key):
  .../kernel (HWIO)             -> .../weight (OIHW, transposed)
  .../scale (GroupNorm)         -> .../weight
  .../bias                      -> .../bias
  encoder.down_blocks.i.downsample.conv -> encoder.down_blocks.i.downsamplers.0.conv
  decoder.up_blocks.i.upsample.conv     -> decoder.up_blocks.i.upsamplers.0.conv
  quantize.embedding            -> quantize.embedding.weight  [K, D]

Supported diffusers configs: DownEncoderBlock2D / UpDecoderBlock2D blocks, act_fn silu,
norm_type group, mid_block_add_attention False (Muse's tokenizer has no attention). aMUSEd
(amused/amused-256, amused-512, subfolder vqvae) satisfies all of these.
"""
from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np

from muse_jax import paths
from muse_jax.models import vqgan as V
from muse_jax.models.functional import functionalize
from muse_jax.weights.safetensors_io import SafetensorsReader, WeightsError, check_keys

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def vqgan_config_from_diffusers(cfg: dict[str, Any], **overrides) -> V.VQGANConfig:
  """A VQGANConfig matching a diffusers VQModel `config.json` (dict). aMUSEd: pixel_range 0_1."""
  problems = []
  if cfg.get("act_fn", "silu") not in ("silu", "swish"):
    problems.append(f"act_fn={cfg['act_fn']!r} (need silu)")
  if cfg.get("norm_type", "group") != "group":
    problems.append(f"norm_type={cfg['norm_type']!r} (need group)")
  if cfg.get("mid_block_add_attention", True):
    problems.append("mid_block_add_attention=True (muse_jax tokenizers have no attention)")
  for k, want in (("down_block_types", "DownEncoderBlock2D"),
                  ("up_block_types", "UpDecoderBlock2D")):
    bad = [t for t in cfg.get(k, [want]) if t != want]
    if bad:
      problems.append(f"{k} contains {bad} (need {want})")
  if problems:
    raise WeightsError("unsupported diffusers VQModel config: " + "; ".join(problems))
  chans = tuple(cfg.get("block_out_channels", (64,)))
  if len(cfg.get("down_block_types", ["x"])) != len(chans):
    raise WeightsError("diffusers config: down_block_types and block_out_channels differ in length")
  kw = dict(
      block_out_channels=chans,
      layers_per_block=int(cfg.get("layers_per_block", 1)),
      latent_channels=int(cfg.get("latent_channels", 3)),
      codebook_size=int(cfg.get("num_vq_embeddings", 256)),
      codebook_dim=cfg.get("vq_embed_dim"),
      norm_groups=int(cfg.get("norm_num_groups", 32)),
      in_channels=int(cfg.get("in_channels", 3)),
      out_channels=int(cfg.get("out_channels", 3)),
      pixel_range="0_1",
      dtype="float32",
  )
  kw.update(overrides)
  return V.VQGANConfig(**kw)


def read_diffusers_config(path: str) -> dict[str, Any]:
  """config.json of a diffusers model directory (or of the directory holding `path`)."""
  p = paths.resolve(path)
  f = (p if p.is_dir() else p.parent) / "config.json"
  if not f.exists():
    raise FileNotFoundError(f"{f} not found: pass the VQModel directory (with config.json) or "
                            "give the architecture in the muse_jax config (model.*)")
  return json.loads(f.read_text())


def _key_str(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]


def diffusers_name(parts: list[str]) -> str:
  """muse_jax param path (list of names) -> diffusers state-dict key."""
  out = []
  for p in parts[:-1]:
    out.append({"downsample": "downsamplers.0", "upsample": "upsamplers.0"}.get(p, p))
  leaf = parts[-1]
  if parts[-2:] == ["quantize", "embedding"]:
    out.append("embedding")
    leaf = "weight"
  out.append({"kernel": "weight", "scale": "weight"}.get(leaf, leaf))
  return ".".join(out)


def _torch_shape(parts: list[str], shape: tuple[int, ...]) -> tuple[int, ...]:
  if parts[-1] == "kernel":
    h, w, i, o = shape
    return (o, i, h, w)
  return tuple(shape)


def expected_keys(cfg: V.VQGANConfig) -> dict[str, tuple[list[str], tuple[int, ...]]]:
  """diffusers key -> (muse_jax path, muse_jax shape) for every parameter of `cfg`'s model."""
  fm, _ = functionalize(lambda r: V.VQGAN(cfg, rngs=r))
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(fm.abstract_params()):
    parts = _key_str(path)
    out[diffusers_name(parts)] = (parts, tuple(leaf.shape))
  return out


def _set(tree: dict, parts: list[str], value):
  node = tree
  for p in parts[:-1]:
    key = int(p) if p.isdigit() else p
    node = node.setdefault(key, {})
  node[parts[-1]] = value


def load_diffusers_vq(path: str, cfg: V.VQGANConfig | None = None):
  """Returns (VQGANConfig, params) from a VQModel directory or .safetensors file.

  With `cfg=None` the architecture is read from config.json beside the weights.
  Params are fp32 numpy arrays in a nested dict matching `functionalize(VQGAN)`.
  """
  if cfg is None:
    cfg = vqgan_config_from_diffusers(read_diffusers_config(path))
  file = f"{path.rstrip('/')}/{WEIGHTS_NAME}" if paths.resolve(path).is_dir() else path
  if not file.endswith(".safetensors"):
    raise WeightsError(f"{file}: only .safetensors VQModel weights are read (never pickles); "
                       "convert .bin/.ckpt files with safetensors first")
  reader = SafetensorsReader(file)
  want = expected_keys(cfg)
  check_keys({k: _torch_shape(p, s) for k, (p, s) in want.items()},
             {k: reader.shape(k) for k in reader}, source=file)
  params: dict = {}
  for key, (parts, _) in want.items():
    w = np.asarray(reader[key], dtype=np.float32)
    if parts[-1] == "kernel":
      w = np.transpose(w, (2, 3, 1, 0))
    _set(params, parts, w)
  return cfg, params


def to_diffusers_state(params) -> dict[str, np.ndarray]:
  """Inverse mapping (muse_jax params -> diffusers keys/layout), e.g. to export a tokenizer."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    parts = _key_str(path)
    w = np.asarray(leaf, dtype=np.float32)
    if parts[-1] == "kernel":
      w = np.ascontiguousarray(np.transpose(w, (3, 2, 0, 1)))
    out[diffusers_name(parts)] = w
  return out
