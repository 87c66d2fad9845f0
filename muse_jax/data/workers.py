"""Host work in worker processes, for pure-Python work that holds the GIL (drawing scenes).

`ProcessPool(n)` runs module-level functions on `n` processes started with `spawn`, never
`fork`: the caller may already run JAX/XLA threads, which a forked child would inherit in an
undefined state. Work goes in as small arguments (indices, seeds), never as images.

Shutdown: `close()` cancels what has not started and waits for the workers; an unclosed pool
is closed when it is garbage-collected or at interpreter exit. Workers ignore SIGINT, so a
Ctrl-C reaches only the main process, which shuts them down on its way out, and each worker
exits as soon as the main process is gone (even after a SIGKILL), so none is left orphaned. A
worker's exception is re-raised by `Future.result()` in the main process as the original
exception.

Grain's multiprocessing (`mp_prefetch`) was not used: its state is per-worker iterator states,
and a source here resumes from a batch count and rewinds on every evaluation (`set_state`),
which would restart Grain's worker processes each time.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import threading
import weakref


def _exit_with_parent() -> None:
  multiprocessing.parent_process().join()  # returns when the main process has exited
  os._exit(1)  # pylint: disable=protected-access


def _init_worker() -> None:
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  threading.Thread(target=_exit_with_parent, daemon=True).start()


class ProcessPool:
  """`processes` spawned workers; `submit(fn, *args)` returns a concurrent.futures.Future."""

  def __init__(self, processes: int):
    if processes < 1:
      raise ValueError(f"a process pool needs >= 1 processes, got {processes}")
    self.processes = processes
    self._executor = concurrent.futures.ProcessPoolExecutor(
        processes, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)
    self._finalizer = weakref.finalize(self, _shutdown, self._executor)

  def submit(self, fn, *args) -> concurrent.futures.Future:
    return self._executor.submit(fn, *args)

  def close(self) -> None:
    """Cancel the work not started, wait for the running work and the workers to end."""
    self._finalizer()

  def __enter__(self) -> ProcessPool:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _shutdown(executor: concurrent.futures.ProcessPoolExecutor) -> None:
  try:
    executor.shutdown(wait=True, cancel_futures=True)
  except RuntimeError:  # collected in the executor's own thread: it is stopping, cannot wait
    pass
