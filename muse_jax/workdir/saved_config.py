"""WORKDIR/config.json: the training config the trainer saves, read back for sampling/export.

JSON has no tuples, so lists read back as tuples. Only the `model` keys that change parameter
shapes are adopted from a saved config; the runtime ones (RUNTIME_MODEL_KEYS) stay as the
reading config sets them.
"""
from __future__ import annotations

import copy
import json
from typing import Optional

import ml_collections

from muse_jax import paths

CONFIG_FILE = "config.json"
# model keys that change parameter shapes (the rest: dtype, attention, remat, ... are runtime).
RUNTIME_MODEL_KEYS = ("dtype", "param_dtype", "attention", "remat", "scan_layers", "dropout",
                      "fp8_matmuls", "fp8_training")


def stored_config(config):
  """`config` as its parameters are stored (checkpoints, exports): with the sampling transform
  `model.fp8_matmuls` off (muse_jax/models/fp8.py quantizes after loading)."""
  if config.stage not in ("base", "sr") or not config.model.get("fp8_matmuls", False):
    return config
  config = copy.deepcopy(config)
  with config.unlocked():
    config.model.fp8_matmuls = False
  return config


def saved_config(workdir: paths.PathLike) -> Optional[dict]:
  """WORKDIR/config.json (the trainer writes the whole training config there), or None."""
  if not workdir:
    return None
  path = paths.resolve(workdir) / CONFIG_FILE
  if not path.is_file():
    return None
  saved = json.loads(path.read_text())
  return saved if isinstance(saved, dict) else None


def saved_model_config(workdir: str) -> Optional[dict]:
  """The `model` section of WORKDIR/config.json (written by the trainer), or None."""
  model = (saved_config(workdir) or {}).get("model")
  return model if isinstance(model, dict) else None


def _json_to_config(value):
  """JSON values back to config values: lists were tuples (JSON has no tuples)."""
  if isinstance(value, dict):
    return {k: _json_to_config(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_json_to_config(v) for v in value)
  return value


def load_saved_config(directory: str) -> ml_collections.ConfigDict:
  """DIRECTORY/config.json (a training workdir or an export) as a ConfigDict."""
  saved = saved_config(directory)
  if saved is None:
    raise FileNotFoundError(f"no config.json in {directory or '(empty path)'}; "
                            "`python -m muse_jax.train` writes it into its workdir")
  return ml_collections.ConfigDict(_json_to_config(saved))


def adopt_saved_model_config(config, workdir: str) -> list[str]:
  """Copies shape-defining `model` keys from WORKDIR/config.json into `config.model`.

  The checkpoint was trained with those shapes; runtime keys (RUNTIME_MODEL_KEYS) stay as the
  sampling config sets them. Returns the keys that changed.
  """
  saved = saved_model_config(workdir)
  if saved is None:
    return []
  changed = []
  with config.unlocked():
    for key, value in saved.items():
      if key in RUNTIME_MODEL_KEYS or key not in config.model:
        continue
      current = config.model[key]
      if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
      if current != value:
        config.model[key] = value
        changed.append(key)
  return changed


def write_config(workdir: paths.PathLike, config) -> None:
  """Saves the whole training config as WORKDIR/config.json (the trainer, on process 0)."""
  workdir = paths.resolve(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  paths.write_atomic(workdir / CONFIG_FILE, config.to_json_best_effort(indent=2))
