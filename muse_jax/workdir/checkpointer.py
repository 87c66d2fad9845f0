"""The checkpoint writer of a training run, and its restore that survives a bad newest step.

Each step directory holds `state` (the sharded train state, written by every process), `data`
(the process-0 JSON position of the input iterator) and `integrity` (JSON: the state is
finite, per-leaf checksums, a digest of `data`; see integrity.py). Saves are asynchronous
(only the device-to-host copy blocks), atomic (Orbax writes to a temporary directory and
renames it; on gs://, which has no rename, a step counts once its commit_success.txt exists)
and the last `keep` steps are kept. Unfinished saves are ignored on restore.
Restoring takes the *target* shardings, so a run saved on one mesh restores onto another.

Guarantees:
- Nothing non-finite is written: `save` refuses a state with NaN/Inf (`NonFiniteState`).
- A failed save is reported once it fails: `poll()` (called every step) and every later call
  raise `WorkdirWriteError`; the older checkpoints stay where they are.
- `restore_newest` verifies what it reads (Orbax itself does not checksum array data) and
  falls back from an unreadable or altered step to the newest intact one, moving the bad ones
  to `<directory>_rejected/` so that later saves and readers never meet them again;
  `NoIntactCheckpoint` when none is intact (then nothing is moved).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from muse_jax import paths
from muse_jax.workdir import integrity
from muse_jax.workdir.access import WorkdirWriteError, check_writable, describe


class NonFiniteState(ValueError):
  """A state with NaN or Inf was about to be saved."""


class CorruptCheckpoint(ValueError):
  """A checkpoint restored, but not as it was saved (or not finite)."""


class NoIntactCheckpoint(RuntimeError):
  """Every checkpoint in the directory failed to restore."""


def _everywhere(ok: bool) -> bool:
  """True when `ok` holds on every process (each may read different shards)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


@contextlib.contextmanager
def _quiet_failed_reads():
  """Orbax warns about each missing step metadata file, and asyncio logs every read still in flight
  when a restore fails (pages of TensorStore specs); `restore_newest` reports each failure in
  one line instead."""
  loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


class Checkpointer:
  def __init__(self, directory: str, cfg):
    self.directory = str(paths.resolve(directory))
    self.rejected_directory = self.directory + "_rejected"
    self.every_steps = int(cfg.every_steps)
    check_writable(self.directory)
    # Step directories are created in the blocking part of `save` (a few mkdirs), so an
    # unwritable or full directory fails that call. Created asynchronously, the failure
    # leaves Orbax's other save threads waiting for a signal that never comes until their
    # timeout, holding the process at exit.
    async_options = ocp.options.AsyncOptions(create_directories_asynchronously=False)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=int(cfg.every_steps), max_to_keep=int(cfg.keep),
        enable_async_checkpointing=bool(cfg.async_save), create=True,
        async_options=async_options)
    with _quiet_failed_reads():  # a broken step is reported by restore_newest
      self.manager = ocp.CheckpointManager(self.directory, options=options,
                                           item_names=("state", "data", "integrity"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    return step % self.every_steps == 0

  # --- writing -----------------------------------------------------------------------------
  def _write_failed(self, step: Optional[int], error: BaseException) -> WorkdirWriteError:
    try:
      self.manager.reload()  # the failed step is not listed; older ones are
    except Exception:  # closed already, or the directory itself is gone: keep the last list
      pass
    which = "a checkpoint" if step is None else f"checkpoint step {step}"
    return WorkdirWriteError(f"could not write {which} to {self.directory}: {describe(error)}")

  def _saving_step(self) -> Optional[int]:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
    """Starts an asynchronous save; NonFiniteState (nothing written) if `state` is not
    finite, WorkdirWriteError if this or the previous save failed."""
    if not force and not self.should_save(step):
      return False
    # Only save steps read the whole state for the finite check and checksums, so training
    # steps pay nothing; a save already copies the whole state to the host, and this pass
    # reads it once more on the device.
    summary = integrity.summarize(state, data_state)
    if not summary["finite"]:
      raise NonFiniteState(f"the state after step {step} holds NaN or Inf")
    self.wait()  # a failure of the previous save surfaces here, naming that step
    try:
      return self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
          integrity=ocp.args.JsonSave(summary)), force=force)
    except OSError as e:
      raise self._write_failed(step, e) from None

  def poll(self, collective: bool = True) -> None:
    """WorkdirWriteError if an asynchronous save has failed; never blocks on one running.
    With several processes, only `collective` calls look (every process makes them at the
    same step, and all stop together)."""
    if jax.process_count() > 1 and not collective:
      return
    step, error = None, None
    if not self.manager.is_saving_in_progress():  # finished: joining returns at once
      step = self._saving_step()
      try:
        self.manager.wait_until_finished()
      except Exception as e:  # whatever the background write raised: the save failed
        error = e
    if not _everywhere(error is None):
      raise self._write_failed(step, error or RuntimeError("it failed on another process"))

  def wait(self) -> None:
    """Blocks until the pending save is written; WorkdirWriteError if it failed."""
    step = self._saving_step()
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      raise self._write_failed(step, e) from None

  def close(self, quiet: bool = False) -> None:
    """Waits for the pending save (WorkdirWriteError if it failed, unless `quiet`: when the
    run is already stopping with another error, that one is reported) and closes."""
    errors = []
    for finish in (self.wait, self.manager.close):  # close re-raises what a failed save left
      try:
        finish()
      except Exception as e:
        errors.append(e)
    if errors and not quiet:
      e = errors[0]
      raise e if isinstance(e, WorkdirWriteError) else self._write_failed(None, e)

  # --- reading -----------------------------------------------------------------------------
  def _has_integrity(self, step: int) -> bool:
    return (paths.resolve(self.directory) / str(step) / "integrity").is_dir()

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """`abstract_state`: ShapeDtypeStructs carrying the target shardings. CorruptCheckpoint
    if the restored state is not what was saved (or not finite)."""
    args = dict(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
    recorded = self._has_integrity(step)
    if recorded:
      args["integrity"] = ocp.args.JsonRestore()
    out = self.manager.restore(step, args=ocp.args.Composite(**args))
    data = dict(out.data)
    if recorded:
      why = integrity.mismatch(out.integrity, out.state, data)
    elif not integrity.summarize(out.state)["finite"]:
      why = "the restored state holds NaN or Inf"
    else:
      why = None
    if why:
      raise CorruptCheckpoint(why)
    return out.state, data

  def restore_newest(self, abstract_state: Any) -> tuple[Any, dict, Optional[int], list[str]]:
    """(state, data, step, notes) from the newest intact checkpoint; (None, None, None, [])
    when there is none at all. `notes` are one-line messages for the user: each newer step
    that could not be used (and where it went), or that the step restored predates
    integrity records."""
    failures: list[tuple[int, str]] = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        with _quiet_failed_reads():
          state, data = self.restore(step, abstract_state)
        why = None
      except Exception as e:  # Orbax/TensorStore raise many types; each means unusable
        state, data, why = None, None, describe(e)
      if not _everywhere(why is None):
        failures.append((step, why or "it could not be restored on another process"))
        continue
      notes = []
      for bad, reason in failures:
        notes.append(f"checkpoint step {bad} in {self.directory} is unusable ({reason}); "
                     f"moved it to {self.reject(bad)} and resuming from step {step}")
      if not self._has_integrity(step):
        notes.append(f"checkpoint step {step} was written without checksums; it is "
                     "finite but could not be verified")
      return state, data, step, notes
    if failures:
      listed = "; ".join(f"step {s}: {r}" for s, r in failures)
      raise NoIntactCheckpoint(f"no checkpoint in {self.directory} can be restored with this "
                               f"config ({listed}); move them out of the way to start a new "
                               "run")
    return None, None, None, []

  def reject(self, step: int) -> str:
    """Moves checkpoint `step` out of the checkpoint directory, into `<directory>_rejected/`;
    returns where it went."""
    self.wait()
    rejected = paths.resolve(self.rejected_directory)
    target = rejected / str(step)
    n = 1
    while target.exists():
      target = rejected / f"{step}.{n}"
      n += 1
    if jax.process_index() == 0:
      rejected.mkdir(parents=True, exist_ok=True)
      # A rename locally; on gs:// a copy of each object, then deletes. A move cut short there
      # can leave a partial step listed, which the next restore_newest rejects again.
      (paths.resolve(self.directory) / str(step)).rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"muse_jax reject checkpoint {step}")
    self.manager.reload()
    return str(target)
