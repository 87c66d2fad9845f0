"""Fault injection for the checkpoint failure tests: a full disk (a small tmpfs filled up), a
read-only directory (a read-only bind mount as root, where permission bits do not stop
writes; chmod otherwise), and a batch source that injects a fault at a given step."""
from __future__ import annotations

import contextlib
import os
import subprocess

import pytest

from muse_jax.data.batch import BatchSource


def _run(*cmd: str) -> subprocess.CompletedProcess:
  return subprocess.run(list(cmd), capture_output=True, text=True)


def mounts_allowed() -> bool:
  return os.geteuid() == 0 and _run("mount", "--version").returncode == 0


@contextlib.contextmanager
def tmpfs(path: str, size: str = "4m"):
  """A `size` tmpfs mounted at `path` (skips the test where mounting is not allowed)."""
  os.makedirs(path, exist_ok=True)
  if not mounts_allowed():
    pytest.skip("mounting a tmpfs needs root")
  r = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path)
  if r.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
  try:
    yield path
  finally:
    _run("umount", "-l", path)


def fill(directory: str) -> str:
  """Writes a ballast file into `directory` until its filesystem is full; returns its path."""
  path = os.path.join(directory, "ballast")
  with open(path, "wb", buffering=0) as f:  # unbuffered: nothing left to flush at close
    try:
      while True:
        f.write(b"\0" * (1 << 16))
    except OSError:
      pass
  return path


@contextlib.contextmanager
def read_only(path: str):
  """`path` read-only until exit: a read-only bind mount as root, chmod 555 otherwise."""
  if os.geteuid() != 0:
    mode = os.stat(path).st_mode
    os.chmod(path, 0o555)
    try:
      yield path
    finally:
      os.chmod(path, mode)
    return
  r = _run("mount", "--bind", path, path)
  if r.returncode:
    pytest.skip(f"cannot bind-mount here: {r.stderr.strip()}")
  try:
    r = _run("mount", "-o", "remount,bind,ro", path)
    if r.returncode:
      pytest.skip(f"cannot remount read-only here: {r.stderr.strip()}")
    yield path
  finally:
    _run("umount", "-l", path)


class FaultAt(BatchSource):
  """Wraps a source; calls `fault()` when the batch of step `at` (1-based) is drawn."""

  def __init__(self, source: BatchSource, at: int, fault):
    self.source, self.at, self.fault, self.drawn = source, at, fault, 0

  def __next__(self):
    self.drawn += 1
    if self.drawn == self.at:
      self.fault()
    return next(self.source)

  def get_state(self):
    return self.source.get_state()

  def set_state(self, state):
    self.source.set_state(state)
