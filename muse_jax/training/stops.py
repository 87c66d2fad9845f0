"""Why a training run stops before its last step, and the signal handling behind it.

- `Preempted`: SIGTERM, a cluster preemption notice or Ctrl-C (SIGINT); raised after the
  checkpoint of the current step is written. Entry points exit with 128 + the signal number
  (143 for SIGTERM and preemption, 130 for Ctrl-C).
- `NonFiniteLoss`: a non-finite loss, or a non-finite state at a save; never saved.

A signal reaches one process, but saving is collective: `AgreedStop` makes every process of a
multi-process run stop after the same step (see its docstring).
"""
from __future__ import annotations

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils

from muse_jax.configs.checks import ConfigError


class NonFiniteLoss(RuntimeError):
  pass


# What to change when a step does not fit the device's memory: said by the train CLI and by the
# ahead-of-time check (training/aot.py), each adding what applies to it.
OUT_OF_MEMORY_ADVICE = ("shard further (--config.mesh.fsdp), recompute activations "
                        "(--config.model.remat=full), lower the per-chip batch "
                        "(--config.train.batch_size or train.grad_accum)")


def out_of_memory_line(error: str) -> str | None:
  """The line of a JAX runtime error's text where XLA says it ran out of device memory
  (RESOURCE_EXHAUSTED, when compiling or allocating), or None for any other error."""
  return next((line.strip() for line in error.splitlines() if "RESOURCE_EXHAUSTED" in line),
              None)


class Preempted(Exception):
  """Raised after the checkpoint of a SIGTERM/preemption/Ctrl-C stop has been written."""

  def __init__(self, step: int, directory: str, signum: int = signal.SIGTERM):
    what = "interrupted (Ctrl-C)" if signum == signal.SIGINT else "preempted"
    super().__init__(f"{what} at step {step}: checkpoint saved in {directory}; "
                     "run the same command again to resume")
    self.step, self.directory, self.signum = step, directory, int(signum)

  @property
  def exit_status(self) -> int:
    return 128 + self.signum


class StopSignals:
  """Records SIGTERM and SIGINT in `.signum` (the first one) so the loop can checkpoint and
  stop; restores the previous handlers on exit. A second Ctrl-C raises KeyboardInterrupt at
  once, for a user who does not want to wait for the checkpoint. SIGINT stays ignored when
  the process was started with it ignored (e.g. under nohup)."""

  def __init__(self):
    self.signum = None
    self._prev = {}

  @property
  def raised(self) -> bool:
    return self.signum is not None

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        if sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN:
          continue
        self._prev[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not in the main thread: no signal handling
        pass
    return self

  def _handle(self, signum, frame):
    if signum == signal.SIGINT and self.signum == signal.SIGINT:
      raise KeyboardInterrupt
    if self.signum is None:
      self.signum = signum

  def __exit__(self, *exc):
    for sig, prev in self._prev.items():
      signal.signal(sig, prev)


class AgreedStop:
  """Whether the loop stops after `step`, decided the same way on every process.

  Single process: as soon as a signal was recorded. Several processes: every `every` steps
  all processes all-gather their recorded signal (0 for none); if any process has one, all
  stop after that step, so a notice that reaches one host (a GKE eviction, a SLURM signal to
  one node, a Ctrl-C in one terminal) stops the job within `every` steps, and every process
  saves the same step. `signum` is then the signal of the lowest-numbered process that got
  one, so all processes exit with the same status.

  The all-gather is a device collective: it costs one tiny collective and a wait for the
  current step, hence the `every` (checkpoint.stop_check_every). JAX's own preemption sync
  (`multihost_utils.reached_preemption_sync_point`) is not used: its notifier is a SIGTERM
  handler in C++, which the Python handler of `StopSignals` replaces (Python cannot chain to
  it), and it knows nothing of Ctrl-C.
  """

  def __init__(self, signals: StopSignals, every: int):
    if int(every) < 1:
      raise ConfigError(f"checkpoint.stop_check_every={every} must be at least 1")
    self.signals, self.every = signals, int(every)
    self.signum = None

  def due(self, step: int) -> bool:
    """True when `step` is one at which the processes all-gather (multi-process only)."""
    return jax.process_count() > 1 and step % self.every == 0

  def __call__(self, step: int) -> bool:
    if jax.process_count() == 1:
      self.signum = self.signals.signum
      return self.signum is not None
    if not self.due(step):
      return False
    seen = np.asarray(multihost_utils.process_allgather(np.int32(self.signals.signum or 0)))
    seen = seen[seen != 0]
    if seen.size:
      self.signum = int(seen[0])
    return self.signum is not None
