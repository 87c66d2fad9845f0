"""Loading the stages a sampling pipeline names: transformer stages (base, SR) and VQ tokenizers.

A pipeline section (muse_jax/configs/common_pipeline.py) names a training config and a workdir;
the workdir is a training workdir (only the parameters of its checkpoint are restored, see
`muse_jax.workdir.checkpoints.restore_params`), an export directory (`python -m
muse_jax.export`), or, for tokenizers, a diffusers VQModel. The stage registry builds each
model. Transformer parameters are cast once to a 16-bit compute dtype.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from muse_jax import paths
from muse_jax.configs.files import config_from_name
from muse_jax.encoders.vq_tokenizer import VQTokenizer
from muse_jax.models import fp8, vqgan as V
from muse_jax.training.registry import stage_model
from muse_jax.workdir import checkpoints, export_io
from muse_jax.workdir.saved_config import (RUNTIME_MODEL_KEYS, adopt_saved_model_config,
                                           load_saved_config, stored_config)

TRANSFORMER_STAGES = ("base", "sr")


# --------------------------------------------------------------------------------------------
# Stage configs and loading.
# --------------------------------------------------------------------------------------------


def _to_python(value):
  if isinstance(value, list):
    return tuple(_to_python(v) for v in value)
  return value


def stage_workdir(section, name: str, root: Optional[str]) -> str:
  """`section.workdir`, or ROOT/<name> when it is empty and a root workdir is given."""
  if section.workdir:
    return str(section.workdir)
  return os.path.join(root, name) if root else ""


def stage_config(section, workdir: str = "") -> ml_collections.ConfigDict:
  """The training config of one pipeline stage, with the section's model overrides applied.

  `section.config` names a runnable config (configs/<name>.py or a .py path) or a saved
  config.json (a workdir's, as muse_jax/sampling/chain.py gives). When `workdir` holds the
  trainer's config.json, its shape-defining model keys win (the checkpoint was trained with
  them); runtime keys (dtype, attention, ...) follow the section.
  """
  name = str(section.config)
  if name.endswith(".json"):
    config = load_saved_config(os.path.dirname(name))
  else:
    config = config_from_name(name)
  with config.unlocked():
    for key, value in section.model.items():
      if key not in config.model:
        raise ValueError(f"pipeline stage {section.config}: model.{key} is not a key of the "
                         f"training config's model section ({sorted(config.model.keys())})")
      config.model[key] = _to_python(value)
  if workdir:
    adopt_saved_model_config(config, workdir)
    with config.unlocked():
      for key in list(config.model.keys()):
        config.model[key] = _to_python(config.model[key])
  return config


@dataclasses.dataclass
class LoadedStage:
  """A transformer stage ready to sample: its training config, model definition, params."""
  name: str
  config: ml_collections.ConfigDict
  model_def: Any
  params: Any
  step: int = 0

  @property
  def model(self):
    return self.config.model

  @property
  def mask_id(self) -> int:
    return int(self.config.model.codebook_size)

  @property
  def grid(self) -> int:
    return int(self.config.model.grid_size)


def load_transformer(section, name: str, root: Optional[str] = None) -> LoadedStage:
  """Loads the base or SR stage a pipeline section names (only its parameters): from a
  training workdir or an export directory (`python -m muse_jax.export`)."""
  workdir = stage_workdir(section, name, root)
  if export_io.is_export(workdir):
    config, params, step = load_exported_stage(section, name, workdir)
  else:
    config = stage_config(section, workdir)
    if config.stage != ("base" if name == "base" else "sr"):
      raise ValueError(f"pipeline.{name}.config={section.config!r} is a {config.stage!r} "
                       f"config; pipeline.{name} needs a {'base' if name == 'base' else 'sr'} "
                       "training config")
    params, step = load_stage_params(config, workdir, step=section.step, name=name,
                                     config_name=str(section.config),
                                     model_overrides=section.model)
  return sampling_stage(name, config, params, step)


def sampling_stage(name: str, config, params, step: int = 0) -> LoadedStage:
  """A LoadedStage from a stage's config and trained params, in the layout `config.model`
  samples with: floating params cast to a 16-bit compute dtype (`cast_params`), then, with
  `model.fp8_matmuls`, the post-norm projections quantized to e4m3 (muse_jax/models/fp8.py)."""
  params = cast_params(params, config.model.dtype)
  if config.model.get("fp8_matmuls", False):
    params = fp8.quantize_params(params)
  return LoadedStage(name, config, stage_model(config), params, step)


def cast_params(params, dtype: str):
  """Floating params in the compute dtype when it is 16-bit (cast once at load, so the
  decoding loop reads half the bytes and never converts weights); else unchanged."""
  if jnp.dtype(dtype).itemsize != 2:
    return params
  return jax.tree.map(
      lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)


def load_exported_stage(section, name: str, path: str):
  """(config, params as stored, step) of an exported stage.

  Shapes come from the export's config.json; the section's runtime model keys (dtype,
  attention, ...) apply on top. A section step other than the exported one is an error.
  """
  want = name if name in TRANSFORMER_STAGES else "vqgan"
  info = export_io.read_info(path)
  if info.get("stage") != want:
    raise ValueError(f"pipeline.{name}.workdir={path} is an export of a {info.get('stage')!r} "
                     f"stage; pipeline.{name} needs a {want} stage")
  if section.step is not None and int(section.step) != int(info["step"]):
    raise ValueError(f"pipeline.{name}.step={section.step} but {path} is an export of step "
                     f"{info['step']}; leave the step unset or export that step")
  overrides = {k: _to_python(v) for k, v in section.model.items()
               if k in RUNTIME_MODEL_KEYS}
  config, _, params = load_exported(path, model_overrides=overrides)
  return config, params, int(info["step"])


def is_diffusers(path: str) -> bool:
  """Whether `path` is a diffusers VQModel (a .safetensors file or a directory holding one)."""
  return path.endswith(".safetensors") or (
      paths.resolve(path) / "diffusion_pytorch_model.safetensors").is_file()


def load_vq(section, name: str, root: Optional[str], mesh: Mesh):
  """The VQTokenizer a pipeline section names: a vqgan workdir or export, or a diffusers
  VQModel."""
  workdir = stage_workdir(section, name, root)
  if workdir and is_diffusers(workdir):
    return VQTokenizer.from_diffusers(workdir, mesh, dtype=section.model.get("dtype"))
  if export_io.is_export(workdir):
    config, params, _ = load_exported_stage(section, name, workdir)
    return VQTokenizer(V.VQGANConfig.from_config(config.model), params, mesh)
  config = stage_config(section, workdir)
  if config.stage != "vqgan":
    raise ValueError(f"pipeline.{name}.config={section.config!r} is a {config.stage!r} "
                     "config; tokenizers need a vqgan training config")
  params, _ = load_stage_params(config, workdir, step=section.step, name=name,
                                config_name=str(section.config), model_overrides=section.model)
  return VQTokenizer(V.VQGANConfig.from_config(config.model), params, mesh)


def single_device_mesh() -> Mesh:
  return Mesh(np.asarray(jax.local_devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))


def restore_stage_params(config, workdir: str, *, step: Optional[int] = None,
                         which: str = "auto", mesh: Optional[Mesh] = None, name: str = "",
                         config_name: str = "",
                         model_overrides=None) -> tuple[Any, int, str]:
  """Restores only the parameters of the stage `config` describes from its training workdir.

  Args:
    config: the stage's training config (`config.stage` in vqgan / base / sr, `config.model`).
    workdir: the training workdir (holds checkpoints/).
    step: a specific step; None = the newest finished one.
    which: 'auto' (the EMA when the checkpoint holds one, else the raw params), 'ema' or 'raw'.
    mesh: parameters are replicated over it; None = the first local device only.
    name: the stage's role in messages ('base', 'sr', 'vq_lo', ...).
    config_name: the training config's name, for the "train it with ..." hint.
    model_overrides: the pipeline section's `model` overrides, for the same hint.

  Returns:
    (params as a nested dict of jax.Arrays, the step restored, 'ema' or 'raw').
  """
  abstract = stage_model(stored_config(config)).abstract_params()
  return checkpoints.restore_params(
      workdir, abstract, what=name or config.stage, step=step, which=which, mesh=mesh,
      config_name=config_name or f"<{config.stage} config>", model_overrides=model_overrides)


def load_stage_params(config, workdir: str, **kwargs) -> tuple[Any, int]:
  """(params, step) of `restore_stage_params` (the EMA when there is one)."""
  params, step, _ = restore_stage_params(config, workdir, **kwargs)
  return params, step


def load_exported(path: str, **kwargs):
  """An export directory -> (config, model_def, params); `export_io.read_export`'s arguments,
  with the stage registry building the model."""
  return export_io.read_export(path, lambda config: stage_model(stored_config(config)),
                               **kwargs)
