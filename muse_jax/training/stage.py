"""What the generic training loop, sampling and export need from a stage (`vqgan`, `base`,
`sr`).

A stage owns its config schema and start-time checks, its model(s), optimizer(s), losses and
input format; the loop (`muse_jax.training.loop`) owns devices, data feeding, checkpoints,
signals and logging. Everything a stage returns from `init_state`/`train_step`/`eval_step` must
be a pure function of its arguments so it can be `jax.jit`-ed with explicit shardings and
resumed exactly.

To add a stage: subclass `Stage`, then add one line to `STAGES` in
`muse_jax/training/registry.py`.
"""
from __future__ import annotations

import abc
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from muse_jax.data.batch import BatchSource, Feature

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


class Stage(abc.ABC):
  """A trainable stage. Subclasses set `name` and implement the abstract methods."""

  name: str = ""
  # The metrics of the progress line, in order; None shows all (files and TensorBoard get all).
  console_metrics: tuple[str, ...] | None = None

  @classmethod
  @abc.abstractmethod
  def reference_config(cls):
    """Every key a config of this stage may use, with its default (a ConfigDict)."""

  @classmethod
  def validate(cls, config) -> None:
    """The stage's own start-time checks of `config`; raise ConfigError. Runs before any
    model is built (`muse_jax.training.registry.validate`)."""

  @staticmethod
  @abc.abstractmethod
  def make_model(config, rngs):
    """The stage's model (the one checkpoints, sampling and export hold) from a config."""

  def __init__(self, config, mesh: Mesh):
    self.config = config
    self.mesh = mesh
    self.rules = tuple(tuple(r) for r in config.mesh.rules)

  @abc.abstractmethod
  def init_state(self, key: jax.Array) -> Any:
    """Fresh train state (a pytree of arrays); jit-able."""

  @abc.abstractmethod
  def state_shardings(self, abstract_state: Any) -> Any:
    """NamedShardings for every leaf of `abstract_state` (same tree)."""

  @abc.abstractmethod
  def train_step(self, state: Any, batch: Batch, key: jax.Array) -> tuple[Any, Metrics]:
    """One optimizer step. Metrics are scalars and must include `loss`."""

  @abc.abstractmethod
  def eval_step(self, state: Any, batch: Batch, key: jax.Array) -> Metrics:
    """Held-out metrics for one batch (deterministic given `key`)."""

  @abc.abstractmethod
  def features(self) -> dict[str, Feature]:
    """The batch format this stage consumes."""

  @abc.abstractmethod
  def make_source(self, split: str, process_index: int, process_count: int) -> BatchSource:
    """Process-local batches for `split` ('train' or 'eval') from `config.data`."""

  def flops_per_example(self, attention_only: bool = False) -> float:
    """Model FLOPs of one training example (forward + backward), for MFU. 0 if unknown.
    `attention_only`: the part in attention's score and value products (what flash attention
    kernels compute), for benchmarks/profile_step.py's floor."""
    return 0.0

  def images(self, state: Any, batch: Batch) -> dict[str, np.ndarray]:
    """Named [H, W, 3] images in [0, 1] for TensorBoard (every `train.image_grid_every`), from
    the state and this step's global train batch (jax.Arrays laid out as the train step's).
    Every process calls it, in single- and multi-process runs alike, so it may run collectives
    (a jitted program over the sharded state); process 0's result is written."""
    return {}

  def params_for_export(self, state: Any) -> Any:
    """The parameters a sampler/exporter needs (EMA if kept)."""
    return state.params
