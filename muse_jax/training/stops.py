"""Why a training run stops before its last step, and the signal handling behind it.

- `Preempted`: SIGTERM, a cluster preemption notice or Ctrl-C (SIGINT); raised after the
  checkpoint of the current step is written. Entry points exit with 128 + the signal number
  (143 for SIGTERM and preemption, 130 for Ctrl-C).
- `NonFiniteLoss`: a non-finite loss, or a non-finite state at a save; never saved.
"""
from __future__ import annotations

import signal


class NonFiniteLoss(RuntimeError):
  pass


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
