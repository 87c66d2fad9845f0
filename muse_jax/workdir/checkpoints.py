"""The readers of a workdir's Orbax checkpoints: newest step, parameters only, the raw state.
The writer, `Checkpointer`, is in checkpointer.py (which documents the layout).

Sampling and export need only the parameters: `restore_params` restores just that subtree with
Orbax's partial restore (no optimizer state is built, read or held in memory): the EMA
(`ema_params`) when the checkpoint holds a non-empty one, else `params`; `which` can insist on
one of them ('ema' / 'raw'). Missing checkpoints raise `MissingCheckpoint` with the command
that trains the stage (with the shape overrides of the pipeline section that asked for it).
"""
from __future__ import annotations

import logging
import shlex
from typing import Any, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from muse_jax import paths
from muse_jax.configs.cli_flags import flag_value
from muse_jax.workdir.saved_config import RUNTIME_MODEL_KEYS

log = logging.getLogger(__name__)


# Which parameters of a checkpoint: 'auto' = the EMA when there is one, else the raw ones.
PARAM_CHOICES = ("auto", "ema", "raw")


class MissingCheckpoint(FileNotFoundError):
  """No finished checkpoint where a stage's parameters were expected."""


def checkpoint_dir(workdir: str) -> str:
  """WORKDIR/checkpoints: an absolute local path, or under the gs:// (or other) URL."""
  return str(paths.resolve(workdir) / "checkpoints")


def train_command(config_name: str, workdir: str,
                  model_overrides: Optional[Mapping[str, Any]] = None) -> str:
  """The command that trains a stage into `workdir` (for error messages).

  `model_overrides` (a pipeline section's `model`) become `--config.model.KEY=VALUE` flags, so
  the trained shapes are the ones the pipeline loads. Runtime keys are left out: they do not
  change the checkpoint (sampling applies the section's own), and some are sampling-only
  choices the trainer refuses (fp8_matmuls) or runs slowly (pallas attention, unscanned layers).
  """
  name = config_name if config_name.endswith(".py") else f"configs/{config_name}.py"
  args = [f"--config={name}", f"--workdir={workdir}"]
  for key, value in sorted(dict(model_overrides or {}).items()):
    if key not in RUNTIME_MODEL_KEYS:
      args.append(f"--config.model.{key}={flag_value(value)}")
  return " ".join(["python -m muse_jax.train", *map(shlex.quote, args)])


def finished_steps(workdir: str) -> list[int]:
  """The finished steps in WORKDIR/checkpoints (Orbax's own listing), oldest first."""
  directory = checkpoint_dir(workdir)
  if not paths.resolve(directory).is_dir():
    return []
  return sorted(ocp.step.checkpoint_steps(directory))


def latest_step(workdir: str) -> Optional[int]:
  """Newest finished step in WORKDIR/checkpoints, or None."""
  steps = finished_steps(workdir)
  return steps[-1] if steps else None


def require_step(workdir: str, config_name: str, what: str, step: Optional[int] = None,
                 model_overrides: Optional[Mapping[str, Any]] = None) -> int:
  """`step` (or the newest one) if it exists in WORKDIR/checkpoints, else MissingCheckpoint
  (whose hint trains `config_name` with `model_overrides`, see `train_command`)."""
  directory = checkpoint_dir(workdir)
  if not workdir:
    raise MissingCheckpoint(f"no workdir given for the {what} stage; set "
                            f"--config.pipeline.{what}.workdir=DIR (trained with "
                            f"{train_command(config_name, 'DIR', model_overrides)})")
  steps = finished_steps(workdir)
  if not steps:
    raise MissingCheckpoint(f"no checkpoint in {directory}; train the {what} stage first with "
                            f"{train_command(config_name, workdir, model_overrides)}")
  if step is None:
    return steps[-1]
  if int(step) not in steps:
    raise MissingCheckpoint(f"no checkpoint for step {step} in {directory} (newest: "
                            f"{steps[-1]})")
  return int(step)


def _quiet_absl():
  """Orbax logs a warning for metadata files that this kind of checkpoint never has."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  return logger, level


def restore_params(workdir: str, abstract: Any, *, what: str, step: Optional[int] = None,
                   which: str = "auto", mesh: Optional[Mesh] = None,
                   config_name: str = "",
                   model_overrides: Optional[Mapping[str, Any]] = None) -> tuple[Any, int, str]:
  """Restores only the parameters of a stage from `workdir`.

  Args:
    workdir: the training workdir (holds checkpoints/).
    abstract: the stage model's abstract parameters (shapes and dtypes to restore into).
    what: the stage's role in messages ('base', 'sr', 'vq_lo', ...).
    step: a specific step; None = the newest finished one.
    which: 'auto' (the EMA when the checkpoint holds one, else the raw params), 'ema' (an
      error without one) or 'raw' (the trained params, never the EMA).
    mesh: parameters are replicated over it; None = the first local device only.
    config_name: the training config's name, for the "train it with ..." hint.
    model_overrides: the pipeline section's `model` overrides, for the same hint.

  Returns:
    (params as a nested dict of jax.Arrays, the step restored, 'ema' or 'raw').
  """
  if which not in PARAM_CHOICES:
    raise ValueError(f"which={which!r}; choose one of {', '.join(PARAM_CHOICES)}")
  step = require_step(workdir, config_name or f"<{what} config>", what, step, model_overrides)
  path = f"{checkpoint_dir(workdir)}/{step}/state"
  if mesh is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  else:
    sharding = NamedSharding(mesh, P())
  checkpointer = ocp.PyTreeCheckpointer()
  logger, level = _quiet_absl()
  try:
    # The handler's own reader: the checkpointer's `metadata` logs a read error and returns
    # None, which would hide why (a missing file, a storage error) behind "holds no params".
    try:
      meta = ocp.PyTreeCheckpointHandler().metadata(paths.resolve(path))
    except (FileNotFoundError, ValueError) as e:
      raise ValueError(f"cannot read the checkpoint metadata in {path}: "
                       f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
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


def _shape_problems(saved_tree, abstract) -> list[str]:
  """The first missing, extra or misshapen arrays of `abstract` against a saved tree."""
  def flat(tree):
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      key = "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                      for k in path)
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
  return problems


def _check_shapes(saved_tree, abstract, what: str, workdir: str) -> None:
  """One line naming the first missing, extra or misshapen parameter."""
  problems = _shape_problems(saved_tree, abstract)
  if problems:
    raise ValueError(f"the {what} checkpoint in {workdir} does not match its config: "
                     f"{'; '.join(problems)}. Give the model settings it was trained with "
                     "(or train it with this config)")


def state_mismatch(workdir: str, step: int, abstract_state: Any) -> Optional[str]:
  """How the train state saved at `step` differs in structure or shapes from
  `abstract_state` (read from Orbax's metadata, no arrays), or None when it matches or the
  metadata cannot be read (the restore then reports what is wrong)."""
  path = f"{checkpoint_dir(workdir)}/{step}/state"
  logger, level = _quiet_absl()
  try:
    meta = ocp.PyTreeCheckpointer().metadata(path).item_metadata
  except Exception:  # noqa: BLE001 - an unreadable checkpoint is the restore's to report
    return None
  finally:
    logger.setLevel(level)
  problems = _shape_problems(getattr(meta, "tree", meta), abstract_state)
  return "; ".join(problems) or None


def _int_keys(tree):
  """Orbax restores nnx.List indices as strings; the model's param dicts use ints."""
  if isinstance(tree, dict):
    return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v)
            for k, v in tree.items()}
  return tree


def restore_raw_params(workdir: str, what: str, hint: str = "give a training workdir") -> dict:
  """The raw (non-EMA) `params` of WORKDIR's newest checkpoint as host arrays, restored
  without a target (their shapes are whatever was saved)."""
  directory = checkpoint_dir(workdir)
  if not paths.resolve(directory).is_dir():
    raise FileNotFoundError(f"{what}={workdir!r}: no checkpoints/ directory ({hint})")
  manager = ocp.CheckpointManager(directory, item_names=("state", "data"))
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"{what}={workdir!r}: no finished checkpoint in {directory}")
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  state = restored.state
  params = state["params"] if isinstance(state, dict) else state.params
  return jax.tree.map(np.asarray, _int_keys(params))
