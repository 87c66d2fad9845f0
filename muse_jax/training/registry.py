"""The stage registry: one line per trainable stage.

A stage class (`muse_jax.training.stage.Stage`) carries its reference config, its start-time
checks and its model factory; training, validation, sampling and export all ask this table.
Adding a stage is one class plus one line here.
"""
from __future__ import annotations

from muse_jax.configs.checks import ConfigError, check_keys, check_training
from muse_jax.models.functional import FunctionalModel, functionalize
from muse_jax.training.base_stage import BaseStage
from muse_jax.training.sr_stage import SuperResStage
from muse_jax.training.stage import Stage
from muse_jax.training.vqgan_stage import VQGANStage

STAGES: dict[str, type[Stage]] = {
    "vqgan": VQGANStage,
    "base": BaseStage,
    "sr": SuperResStage,
}


def get_stage(name: str) -> type[Stage]:
  if name not in STAGES:
    raise ConfigError(f"config.stage={name!r}; choose one of {', '.join(STAGES)}")
  return STAGES[name]


def validate(config) -> None:
  """Every start-time check of a training config (keys, shared sections, the stage's own);
  raises ConfigError. Nothing is built."""
  if "stage" not in config:
    raise ConfigError(f"config.stage is missing; set it to one of {', '.join(STAGES)}")
  stage = get_stage(config.stage)
  check_keys(config, stage.reference_config(), "config")
  check_training(config)
  stage.validate(config)


def stage_model(config) -> FunctionalModel:
  """The FunctionalModel of a training config's model (`config.stage` picks the class)."""
  stage = get_stage(config.stage)
  return functionalize(lambda rngs: stage.make_model(config, rngs))[0]
