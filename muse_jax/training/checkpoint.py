"""Orbax checkpoints of a stage's train state plus the input position.

Each step directory holds `state` (the sharded train state, written by every process) and
`data` (the process-0 JSON position of the input iterator). Saves are asynchronous (only the
device-to-host copy blocks), atomic (Orbax writes to a temporary directory and renames), and
the last `keep` steps are kept. Unfinished saves are ignored on restore.

Restoring takes the *target* shardings, so a run saved on one mesh restores onto another.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
  def __init__(self, directory: str, cfg):
    self.directory = os.path.abspath(directory)
    self.every_steps = int(cfg.every_steps)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=int(cfg.every_steps), max_to_keep=int(cfg.keep),
        enable_async_checkpointing=bool(cfg.async_save), create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    return step % self.every_steps == 0

  def reached_preemption(self, step: int) -> bool:
    """True on every process once the cluster announced a preemption (multi-process only)."""
    return jax.process_count() > 1 and self.manager.reached_preemption(step)

  def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
    return self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data=ocp.args.JsonSave(data_state)), force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """`abstract_state`: ShapeDtypeStructs carrying the target shardings."""
    out = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      data=ocp.args.JsonRestore()))
    return out.state, dict(out.data)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
