"""Load only the parameters of a trained stage (vqgan, base, sr) for sampling.

A training workdir holds `WORKDIR/checkpoints/<step>/state` (the whole train state: params,
optimizer state, EMA, ... ; see muse_jax/training/checkpoint.py). Sampling needs only the
parameters, so `load_stage_params` restores just that subtree with Orbax's partial restore:
no optimizer state is built, read or held in memory.

Which parameters: the EMA (`ema_params`) when the checkpoint holds a non-empty one (what
`MaskedTokenStage.params_for_export` returns), else `params`; `restore_params(which=...)`
can insist on one of them ('ema' / 'raw') and says which it restored.

  model_def = stage_model(config)                  # FunctionalModel of the stage's model
  params, step = load_stage_params(config, workdir)
  model = model_def.bind(params)
  config = load_saved_config(workdir)              # WORKDIR/config.json as a ConfigDict

Missing checkpoints raise `MissingCheckpoint` with the command that trains the stage.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any, Optional

import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from muse_jax.models.functional import FunctionalModel, functionalize

# model keys that change parameter shapes (the rest: dtype, attention, remat, ... are runtime).
RUNTIME_MODEL_KEYS = ("dtype", "param_dtype", "attention", "remat", "scan_layers", "dropout",
                      "fp8_matmuls")
STAGES = ("vqgan", "base", "sr")
# Which parameters of a checkpoint: 'auto' = the EMA when there is one, else the raw ones.
PARAM_CHOICES = ("auto", "ema", "raw")


class MissingCheckpoint(FileNotFoundError):
  """No finished checkpoint where a stage's parameters were expected."""


def stored_config(config):
  """`config` as its parameters are stored (checkpoints, exports): with the sampling transform
  `model.fp8_matmuls` off (muse_jax/models/fp8.py quantizes after loading)."""
  if config.stage not in ("base", "sr") or not config.model.get("fp8_matmuls", False):
    return config
  config = copy.deepcopy(config)
  with config.unlocked():
    config.model.fp8_matmuls = False
  return config


def stage_model(config) -> FunctionalModel:
  """The FunctionalModel of a training config's model (`config.stage` picks the class)."""
  stage = config.stage
  if stage == "base":
    from muse_jax.models.transformer import MaskedTransformer
    make = lambda r: MaskedTransformer(config.model, rngs=r)  # noqa: E731
  elif stage == "sr":
    from muse_jax.models.superres import SuperResTransformer
    make = lambda r: SuperResTransformer(config.model, rngs=r)  # noqa: E731
  elif stage == "vqgan":
    from muse_jax.models import vqgan as V
    cfg = V.VQGANConfig.from_config(config.model)
    make = lambda r: V.VQGAN(cfg, rngs=r)  # noqa: E731
  else:
    raise ValueError(f"config.stage={stage!r}; choose vqgan, base or sr")
  return functionalize(make)[0]


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def train_command(config_name: str, workdir: str) -> str:
  """The command that trains a stage into `workdir` (for error messages)."""
  name = config_name if config_name.endswith(".py") else f"configs/{config_name}.py"
  return f"python -m muse_jax.train --config={name} --workdir={workdir}"


def latest_step(workdir: str) -> Optional[int]:
  """Newest finished step in WORKDIR/checkpoints, or None."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return None
  steps = []
  for name in os.listdir(directory):
    path = os.path.join(directory, name)
    # Orbax writes into a temporary directory and renames it to the bare step number when done.
    if name.isdigit() and os.path.isdir(os.path.join(path, "state")):
      steps.append(int(name))
  return max(steps) if steps else None


def require_step(workdir: str, config_name: str, what: str, step: Optional[int] = None) -> int:
  """`step` (or the newest one) if it exists in WORKDIR/checkpoints, else MissingCheckpoint."""
  directory = checkpoint_dir(workdir)
  if not workdir:
    raise MissingCheckpoint(f"no workdir given for the {what} stage; set "
                            f"--config.pipeline.{what}.workdir=DIR (trained with "
                            f"{train_command(config_name, 'DIR')})")
  newest = latest_step(workdir)
  if newest is None:
    raise MissingCheckpoint(f"no checkpoint in {directory}; train the {what} stage first with "
                            f"{train_command(config_name, workdir)}")
  if step is None:
    return newest
  if not os.path.isdir(os.path.join(directory, str(step), "state")):
    raise MissingCheckpoint(f"no checkpoint for step {step} in {directory} (newest: {newest})")
  return int(step)


def saved_config(workdir: str) -> Optional[dict]:
  """WORKDIR/config.json (the trainer writes the whole training config there), or None."""
  path = os.path.join(os.path.abspath(workdir), "config.json")
  if not workdir or not os.path.isfile(path):
    return None
  with open(path) as f:
    saved = json.load(f)
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


def _quiet_absl():
  """Orbax logs a warning for metadata files that this kind of checkpoint never has."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  return logger, level


def load_stage_params(config, workdir: str, *, step: Optional[int] = None,
                      mesh: Optional[Mesh] = None, name: str = "",
                      config_name: str = "") -> tuple[Any, int]:
  """Restores only the parameters (the EMA when there is one) of the stage `config` describes.

  Returns (params as a nested dict of jax.Arrays, the step restored); the arguments are
  `restore_params`'s.
  """
  params, step, _ = restore_params(config, workdir, step=step, mesh=mesh, name=name,
                                   config_name=config_name)
  return params, step


def restore_params(config, workdir: str, *, step: Optional[int] = None, which: str = "auto",
                   mesh: Optional[Mesh] = None, name: str = "",
                   config_name: str = "") -> tuple[Any, int, str]:
  """Restores only the parameters of the stage `config` describes from `workdir`.

  Args:
    config: the stage's training config (`config.stage` in vqgan / base / sr, `config.model`).
    workdir: the training workdir (holds checkpoints/).
    step: a specific step; None = the newest finished one.
    which: 'auto' (the EMA when the checkpoint holds one, else the raw params), 'ema' (an
      error without one) or 'raw' (the trained params, never the EMA).
    mesh: parameters are replicated over it; None = the first local device only.
    name: the stage's role in messages ('base', 'sr', 'vq_lo', ...).
    config_name: the training config's name, for the "train it with ..." hint.

  Returns:
    (params as a nested dict of jax.Arrays, the step restored, 'ema' or 'raw').
  """
  import orbax.checkpoint as ocp
  if which not in PARAM_CHOICES:
    raise ValueError(f"which={which!r}; choose one of {', '.join(PARAM_CHOICES)}")
  what = name or config.stage
  step = require_step(workdir, config_name or f"<{config.stage} config>", what, step)
  path = os.path.join(checkpoint_dir(workdir), str(step), "state")
  abstract = stage_model(stored_config(config)).abstract_params()
  if mesh is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  else:
    sharding = NamedSharding(mesh, P())
  checkpointer = ocp.PyTreeCheckpointer()
  logger, level = _quiet_absl()
  try:
    meta = checkpointer.metadata(path).item_metadata
    tree = getattr(meta, "tree", meta)
    if not isinstance(tree, dict) or "params" not in tree:
      raise ValueError(f"{path} holds no `params`; is {workdir} a muse_jax training workdir?")
    key = _params_key(tree, which, f"{what} checkpoint {path}")
    _check_shapes(tree[key], abstract, what, workdir)
    item = {key: abstract}
    restore_args = jax.tree.map(
        lambda a: ocp.ArrayRestoreArgs(sharding=sharding, global_shape=a.shape, dtype=a.dtype),
        item)
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  finally:
    logger.setLevel(level)
  return restored[key], step, "ema" if key == "ema_params" else "raw"


def _params_key(tree: dict, which: str, where: str) -> str:
  """The subtree of a checkpoint's state that `which` (auto / ema / raw) picks."""
  has_ema = bool(jax.tree.leaves(tree.get("ema_params", {})))
  if which == "ema" and not has_ema:
    raise MissingCheckpoint(f"the {where} holds no EMA parameters (the stage keeps none, or "
                            "its EMA is off); use the raw ones (params=raw or auto)")
  return "ema_params" if has_ema and which != "raw" else "params"


def _check_shapes(saved_tree, abstract, what: str, workdir: str) -> None:
  """One line naming the first missing, extra or misshapen parameter."""
  def flat(tree):
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      key = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
      out[key] = tuple(getattr(leaf, "shape", ()))
    return out

  saved, want = flat(saved_tree), flat(abstract)
  missing = sorted(set(want) - set(saved))
  extra = sorted(set(saved) - set(want))
  shapes = sorted(k for k in set(want) & set(saved) if want[k] != saved[k])
  problems = []
  if missing:
    problems.append(f"missing {missing[:3]}")
  if extra:
    problems.append(f"unexpected {extra[:3]}")
  if shapes:
    k = shapes[0]
    problems.append(f"{k} has shape {saved[k]} but the config needs {want[k]}")
  if problems:
    raise ValueError(f"the {what} checkpoint in {workdir} does not match its config: "
                     f"{'; '.join(problems)}. Give the model settings it was trained with "
                     "(or train it with this config)")


def config_from_name(config_name: str) -> ml_collections.ConfigDict:
  """`configs/<name>.py`'s get_config(); `name` may also be a path to a .py file."""
  import importlib
  import importlib.util
  if config_name.endswith(".py"):
    spec = importlib.util.spec_from_file_location(
        "_muse_config_" + os.path.basename(config_name)[:-3], config_name)
    if spec is None or not os.path.isfile(config_name):
      raise FileNotFoundError(f"config file {config_name!r} not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  else:
    try:
      module = importlib.import_module(f"configs.{config_name}")
    except ModuleNotFoundError as e:
      raise ValueError(f"no config configs/{config_name}.py ({e})") from e
  return module.get_config()
