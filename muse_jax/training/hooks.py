"""Periodic hooks: work the training loop runs every N steps on the current state.

The loop (loop.py) knows nothing of what a hook does; layers above training (sampling,
evaluation) implement `Hook` and the entry point passes them in, e.g. the sample evaluation of
muse_jax/evaluation/during_training.py, which `muse_jax.train` builds from `config.eval`.

A hook runs on every process, at the same steps, after the step's metrics are finished (so
any collectives it runs see every process in the same order), and before the step's checkpoint
is saved. It must not change the state, consume the training RNG or read the training input:
then a run with hooks trains exactly as one without them, and resumes exactly. Only process 0
writes (`HookContext.reporter` is a no-op elsewhere).
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any

from jax.sharding import Mesh


@dataclasses.dataclass
class HookContext:
  """What a hook may read at a step: the state (not to be changed), the stage and mesh it
  lives on, the reporter (metrics.jsonl, TensorBoard, console) and the run's length."""
  step: int
  state: Any
  stage: Any
  mesh: Mesh
  reporter: Any
  total_steps: int
  is_main: bool


class Hook(abc.ABC):
  """Runs `__call__` every `every` steps and at the last step (`every` <= 0: never)."""

  every: int = 0

  def due(self, step: int, total_steps: int) -> bool:
    return self.every > 0 and (step % self.every == 0 or step == total_steps)

  @abc.abstractmethod
  def __call__(self, ctx: HookContext) -> None:
    """The hook's work at `ctx.step`; runs on every process."""

  def close(self) -> None:
    """Releases what the hook holds; called once when the loop ends."""
