"""Load Hugging Face `CLIPModel` checkpoints (safetensors + config.json) into `models.clip`.

The model's attribute names are transformers' module names, so a parameter path becomes a
state-dict key by joining with "." and renaming the leaf; dense kernels are transposed:
  <dense>.kernel [in..., out...]  <- <dense>.weight [out, in] (transposed; the heads of
                                     q/k/v_proj outputs and out_proj inputs split out)
  <dense>.bias [out...]           <- <dense>.bias [out] (reshaped)
  patch_embedding.kernel [P, P, 3, D] <- patch_embedding.weight [D, 3, P, P] (a conv)
  <norm>.scale / .bias            <- <norm>.weight / .bias
  <embedding>.embedding           <- <embedding>.weight
  class_embedding, logit_scale    <- same names
e.g. `vision_model.encoder.layers.0.self_attn.q_proj.weight`, `text_projection.weight`.
`*.embeddings.position_ids` (a buffer older transformers saved) is read and dropped; any other
missing, unexpected or misshapen key is an error naming all such keys. Nothing is unpickled.

The model's sizes come from the checkpoint's config.json (`config_from_hf`), with transformers'
defaults for absent keys, or from a `CLIPConfig` passed in.
"""
from __future__ import annotations

import functools
import json
import math

import jax
import numpy as np

from muse_jax import paths
from muse_jax.models import clip as C
from muse_jax.models.clip_preprocess import preprocess, validate_images
from muse_jax.models.functional import FunctionalModel, functionalize
from muse_jax.weights.safetensors_io import SafetensorsReader, WeightsError, check_keys

IGNORED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight"}
_TEXT_DEFAULTS = dict(hidden_size=512, num_hidden_layers=12, num_attention_heads=8,
                      intermediate_size=2048, vocab_size=49408, max_position_embeddings=77,
                      eos_token_id=49407, hidden_act="quick_gelu", layer_norm_eps=1e-5)
_VISION_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, image_size=224, patch_size=32, num_channels=3,
                        hidden_act="quick_gelu", layer_norm_eps=1e-5)


def config_from_hf(config: dict) -> C.CLIPConfig:
  """`CLIPConfig` from a transformers CLIPModel config.json dict (absent keys: its defaults).

  The text config's `eos_token_id` 2 (the OpenAI files) means argmax pooling, as in
  transformers; any other id pools at its first occurrence.
  """
  t = {**_TEXT_DEFAULTS, **(config.get("text_config") or {}),
       **(config.get("text_config_dict") or {})}
  v = {**_VISION_DEFAULTS, **(config.get("vision_config") or {}),
       **(config.get("vision_config_dict") or {})}
  for key in ("image_size", "patch_size"):
    if not isinstance(v[key], int):
      raise WeightsError(f"CLIP vision {key} must be one int, got {v[key]!r}")
  if v["num_channels"] != 3:
    raise WeightsError(f"CLIP vision tower with {v['num_channels']} channels; RGB (3) only")
  eos = t["eos_token_id"]
  if not isinstance(eos, int):
    raise WeightsError(f"CLIP text eos_token_id must be one int, got {eos!r}")
  try:
    return C.CLIPConfig(
        C.TextConfig(width=t["hidden_size"], layers=t["num_hidden_layers"],
                     heads=t["num_attention_heads"], mlp=t["intermediate_size"],
                     vocab_size=t["vocab_size"], max_length=t["max_position_embeddings"],
                     eos_token_id=None if eos == 2 else eos, act=t["hidden_act"],
                     eps=t["layer_norm_eps"]),
        C.VisionConfig(width=v["hidden_size"], layers=v["num_hidden_layers"],
                       heads=v["num_attention_heads"], mlp=v["intermediate_size"],
                       image_size=v["image_size"], patch_size=v["patch_size"],
                       act=v["hidden_act"], eps=v["layer_norm_eps"]),
        projection_dim=config.get("projection_dim", 512))
  except ValueError as e:
    raise WeightsError(f"unsupported CLIP config: {e}") from None


def read_config(path: str) -> C.CLIPConfig:
  """The `CLIPConfig` of the config.json in directory `path` (or next to file `path`)."""
  p = paths.resolve(path)
  d = p if p.is_dir() else p.parent
  if not (d / "config.json").exists():
    raise FileNotFoundError(f"no config.json in {d}; pass a CLIPConfig (cfg=...)")
  return config_from_hf(json.loads((d / "config.json").read_text()))


@functools.lru_cache(maxsize=None)
def model_def(cfg: C.CLIPConfig) -> FunctionalModel:
  """The `functionalize`d CLIP of `cfg` (traced once per config)."""
  return functionalize(lambda r: C.CLIP(cfg, rngs=r))[0]


def _keys(path) -> list:
  """Dict keys along a params path: strings, and ints for list indices (layers)."""
  return [getattr(k, "key", getattr(k, "idx", k)) for k in path]


def _hf_shape(names: list[str], shape: tuple[int, ...]) -> tuple[int, ...]:
  if names[-1] == "kernel":
    if names[-2] == "patch_embedding":
      p, _, ch, d = shape
      return (d, ch, p, p)
    n_in = 2 if names[-2] == "out_proj" else 1   # out_proj reads [heads, head_dim]
    return (math.prod(shape[n_in:]), math.prod(shape[:n_in]))
  if names[-1] == "bias":
    return (math.prod(shape),)
  return shape


def expected_keys(cfg: C.CLIPConfig) -> dict[str, tuple]:
  """state-dict key -> (params path, muse_jax shape, transformers shape) for every parameter."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(model_def(cfg).abstract_params()):
    keys = _keys(path)
    names = [str(k) for k in keys]
    shape = tuple(leaf.shape)
    out[".".join(names[:-1] + [LEAF_NAMES.get(names[-1], names[-1])])] = (
        keys, shape, _hf_shape(names, shape))
  return out


def _convert(keys: list, w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  if keys[-1] == "kernel":
    w = np.transpose(w, (2, 3, 1, 0)) if keys[-2] == "patch_embedding" else w.T
  return np.ascontiguousarray(w.reshape(shape))


def load_clip(path: str, cfg: C.CLIPConfig | None = None) -> tuple[C.CLIPConfig, dict]:
  """(config, params: nested dict of float32 numpy arrays for `model_def(cfg).bind`).

  `path`: a `.safetensors` file, a directory holding one (and config.json), or a sharded
  index json. `cfg=None` reads config.json (`read_config`). Raises `WeightsError` naming every
  missing, unexpected and misshapen key before any tensor is read.
  """
  cfg = read_config(path) if cfg is None else cfg
  reader = SafetensorsReader(path)
  want = expected_keys(cfg)
  found = {k: reader.shape(k) for k in reader}
  check_keys({k: hf for k, (_, _, hf) in want.items()}, found,
             source=f"CLIP checkpoint {path}", ignore_unexpected=IGNORED)
  params: dict = {}
  for key, (keys, shape, _) in want.items():
    node = params
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = _convert(keys, np.asarray(reader[key], dtype=np.float32), shape)
  return cfg, params


def validate_tokens(ids, mask, cfg: C.TextConfig) -> tuple[np.ndarray, np.ndarray]:
  """(ids int32 [B, L], mask int32 [B, L]) checked against `cfg`; mask None: all ones."""
  ids = np.asarray(ids)
  if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"CLIP token ids must be an integer array [batch, length], got shape "
                     f"{ids.shape} and dtype {ids.dtype}")
  if not 0 < ids.shape[1] <= cfg.max_length:
    raise ValueError(f"CLIP text length {ids.shape[1]} must be in 1..{cfg.max_length}")
  if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
    raise ValueError(f"CLIP token ids must lie in [0, {cfg.vocab_size}), got "
                     f"[{ids.min()}, {ids.max()}]")
  mask = np.ones(ids.shape, np.int32) if mask is None else np.asarray(mask)
  if mask.shape != ids.shape or not np.all((mask == 0) | (mask == 1)):
    raise ValueError(f"CLIP attention mask must be 0/1 of the ids' shape {ids.shape}, got "
                     f"shape {mask.shape}")
  return ids.astype(np.int32), mask.astype(np.int32)


def embed_fns(params: dict, cfg: C.CLIPConfig, shard=None):
  """(image_embeds, text_embeds): host functions -> float32 numpy [B, projection_dim]
  (projected, not normalised).

    image_embeds(images): [B, H, W, 3] uint8, or float in [0, 1]; `preprocess` to the model's
      image size (resize, crop, normalise) and the vision tower in one jitted function.
    text_embeds(ids, mask=None): CLIP BPE token ids [B, L] with start and end tokens (e.g. from
      `muse_jax.encoders.clip_tokenizer`), mask 1 on tokens and 0 on padding.

  Both validate on the host, then run under `jax.default_matmul_precision("highest")` (float32
  matmuls on GPUs, not TF32). One compilation per input shape and dtype. `shard(array)` (e.g. a
  `jax.device_put` that splits the rows over devices, with `params` replicated on them) places
  each input after the checks.
  """
  put = (lambda x: x) if shard is None else shard
  fm = model_def(cfg)
  run_image = jax.jit(lambda p, x: fm.bind(p).encode_image(preprocess(x, cfg.vision.image_size)))
  run_text = jax.jit(lambda p, i, m: fm.bind(p).encode_text(i, m))

  def image_embeds(images) -> np.ndarray:
    validate_images(images)
    with jax.default_matmul_precision("highest"):
      return np.asarray(run_image(params, put(images)))

  def text_embeds(ids, mask=None) -> np.ndarray:
    ids, mask = validate_tokens(ids, mask, cfg.text)
    with jax.default_matmul_precision("highest"):
      return np.asarray(run_text(params, put(ids), put(mask)))

  return image_embeds, text_embeds
