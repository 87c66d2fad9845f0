"""Host work in worker processes, for pure-Python work that holds the GIL (drawing scenes).

`ProcessPool(n)` runs module-level functions on `n` processes started with `spawn`, never
`fork`: the caller may already run JAX/XLA threads, which a forked child would inherit in an
undefined state. Work goes in as small arguments (indices, seeds), never as images. Task i goes
to worker i mod n, and each worker has pipes of its own, so results come back in order and a
worker killed halfway through a reply (a preemption's SIGTERM to every process of a job, the
OOM killer) cannot leave a lock or a half-read message that hangs the others:
`concurrent.futures.ProcessPoolExecutor`, whose workers share one result queue, was seen to
hang in exactly that case.

`result()` re-raises a worker's exception as the original exception (its traceback in the
worker is added as a note), or raises `BrokenProcessPool` when the worker is gone; a caller
whose work is a pure function of its arguments then does it in the main process instead, so
the main process can still save and stop on its own terms.

Shutdown: `close()` stops the workers (those busy with work nobody will read end at their
reply); an unclosed pool is closed when it is garbage-collected or at interpreter exit.
Workers ignore SIGINT, so a Ctrl-C reaches only the main process, which shuts them down on its
way out, and each worker exits as soon as the main process is gone (even after a SIGKILL). They
start with SIGINT blocked and ignore it before unblocking it: a Ctrl-C while a worker still
starts Python and imports the main module would otherwise print its KeyboardInterrupt too.

A program that uses a pool must start from an `if __name__ == "__main__":` guard, as the
muse_jax entry points do: a spawned worker imports the main module (unless it is a package's
`__main__`).

Grain's multiprocessing (`mp_prefetch`) was not used: its state is per-worker iterator states,
and a source here resumes from a batch count and rewinds on every evaluation (`set_state`),
which would restart Grain's worker processes each time.
"""
from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import sys
import threading
import traceback
import weakref
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import resource_tracker


def warn_workers_lost(what: str) -> None:
  print(f"warning: a worker process of {what} was killed; drawing in the main process from "
        "here on (the same data, more slowly)", file=sys.stderr, flush=True)


def _serve(tasks, results) -> None:
  """A worker: run (fn, args) from `tasks`, reply (ok, value or exception) on `results`."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # drops a Ctrl-C held back since the start
  signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
  parent = multiprocessing.parent_process()
  threading.Thread(target=lambda: (parent.join(), os._exit(1)), daemon=True).start()
  while True:
    try:
      item = tasks.recv()
    except (EOFError, OSError):
      return
    if item is None:
      return
    fn, args = item
    try:
      reply = (True, fn(*args))
    except Exception as e:  # noqa: BLE001 -- re-raised in the main process
      e.add_note("in a worker process:\n" + "".join(traceback.format_exc()))
      reply = (False, e)
    try:
      try:
        results.send(reply)
      except (TypeError, AttributeError, ValueError) as e:  # a reply that does not pickle
        results.send((False, RuntimeError(f"worker reply not picklable: {e}")))
    except OSError:  # the main process closed the pool and no longer reads
      return


class Task:
  """One submitted call; `result()` waits for it."""

  def __init__(self, worker: _Worker):
    self._worker, self.done, self.ok, self.value = worker, False, False, None

  def result(self):
    self._worker.wait(self)
    if self.ok:
      return self.value
    raise self.value

  def cancel(self) -> None:
    """Nothing will ask for the result: it is still received, in order, and dropped."""


class _Worker:

  def __init__(self, ctx):
    self.tasks, child_tasks = ctx.Pipe(duplex=False)[::-1]
    child_results, self.results = ctx.Pipe(duplex=False)[::-1]
    self.process = ctx.Process(target=_serve, args=(child_tasks, child_results), daemon=True,
                               name="muse_jax-worker")
    # The child inherits this thread's signal mask through the exec. Starting multiprocessing's
    # resource tracker (the first spawn does) unblocks SIGINT in this thread: it starts first.
    resource_tracker.ensure_running()
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
      self.process.start()
    finally:
      signal.pthread_sigmask(signal.SIG_SETMASK, held)
    child_tasks.close()
    child_results.close()
    self.pending: collections.deque[Task] = collections.deque()  # sent, reply not read
    self.send_lock, self.recv_lock = threading.Lock(), threading.Lock()
    self.lost = False

  def submit(self, fn, args) -> Task:
    task = Task(self)
    with self.send_lock:
      if self.lost:
        raise BrokenProcessPool("a worker process was killed")
      self.pending.append(task)
      try:
        self.tasks.send((fn, args))
      except OSError:
        self.lost = True
        raise BrokenProcessPool("a worker process was killed") from None
    return task

  def wait(self, task: Task) -> None:
    with self.recv_lock:
      while not task.done:
        if self.lost:
          raise BrokenProcessPool("a worker process was killed")
        try:
          ok, value = self.results.recv()
        except (EOFError, OSError):
          self.lost = True
          continue
        done = self.pending.popleft()
        done.done, done.ok, done.value = True, ok, value

  def stop(self) -> None:
    for conn in (self.tasks, self.results):
      try:
        if conn is self.tasks:
          conn.send(None)
      except OSError:
        pass
      conn.close()

  def end(self) -> None:
    self.process.join(timeout=5)
    if self.process.is_alive():  # still drawing work nobody will read
      self.process.kill()
      self.process.join()


class ProcessPool:
  """`processes` spawned workers, started at the first `submit(fn, *args)` (returns a Task)."""

  def __init__(self, processes: int):
    if processes < 1:
      raise ValueError(f"a process pool needs >= 1 processes, got {processes}")
    self.processes = processes
    self._workers: list[_Worker] = []
    self._next = 0
    self._finalizer = weakref.finalize(self, _shutdown, self._workers)

  def submit(self, fn, *args) -> Task:
    if not self._workers:
      ctx = multiprocessing.get_context("spawn")
      self._workers.extend(_Worker(ctx) for _ in range(self.processes))
    worker = self._workers[self._next % self.processes]
    self._next += 1
    return worker.submit(fn, args)

  def close(self) -> None:
    """Stop the workers and wait for them to end."""
    self._finalizer()

  def __enter__(self) -> ProcessPool:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _shutdown(workers: list[_Worker]) -> None:
  for w in workers:
    w.stop()
  for w in workers:
    w.end()
  workers.clear()
