"""What the generic training loop needs from a stage (`vqgan`, `base`, `sr`).

A stage owns its model(s), optimizer(s), losses and input format; the loop
(`muse_jax.training.loop`) owns devices, data feeding, checkpoints, signals and logging.
Everything a stage returns from `init_state`/`train_step`/`eval_step` must be a pure function
of its arguments so it can be `jax.jit`-ed with explicit shardings and resumed exactly.

To add a stage: subclass `Stage`, then register it in `STAGES` below.
"""
from __future__ import annotations

import abc
import dataclasses
import importlib
from typing import Any, Iterator, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Feature:
  """One batch entry: per-example shape, dtype and logical axes (batch axis first)."""
  shape: tuple[int, ...]
  dtype: Any
  axes: tuple[str | None, ...]


class BatchSource(abc.ABC):
  """A resumable iterator of process-local numpy batches.

  `get_state()` returns a JSON-serialisable position saved with each checkpoint;
  `set_state()` restores it so a resumed run sees exactly the examples it would have seen.
  """

  @abc.abstractmethod
  def __next__(self) -> dict[str, np.ndarray]:
    ...

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  @abc.abstractmethod
  def get_state(self) -> dict:
    ...

  @abc.abstractmethod
  def set_state(self, state: dict) -> None:
    ...


class Stage(abc.ABC):
  """A trainable stage. Subclasses set `name` and implement the abstract methods."""

  name: str = ""

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

  def flops_per_example(self) -> float:
    """Model FLOPs of one training example (forward + backward), for MFU. 0 if unknown."""
    return 0.0

  def images(self, state: Any, local_batch: dict) -> dict[str, np.ndarray]:
    """Named [H, W, 3] images in [0, 1] for TensorBoard (every `train.image_grid_every`)."""
    return {}

  def params_for_export(self, state: Any) -> Any:
    """The parameters a sampler/exporter needs (EMA if kept)."""
    return state.params


STAGES = {
    "base": "muse_jax.training.base_stage:BaseStage",
    "vqgan": "muse_jax.training.vqgan_stage:VQGANStage",
    "sr": "muse_jax.training.sr_stage:SuperResStage",
}


def get_stage(name: str) -> type[Stage]:
  if name not in STAGES:
    raise ValueError(f"config.stage={name!r}; choose one of {sorted(STAGES)}")
  module, cls = STAGES[name].split(":")
  try:
    mod = importlib.import_module(module)
  except ModuleNotFoundError as e:
    raise ValueError(f"stage {name!r} is not available in this version ({e})") from e
  return getattr(mod, cls)
