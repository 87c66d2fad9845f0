"""Shared test utilities for the training tests: tiny configs and subprocess runners."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

from configs import tiny
from tests.xla_env import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Subprocess environment: write every compiled program to the run's compilation cache
# (tests/conftest.py), however small or quick to compile, so that the next process that
# compiles the same program reads it instead.
CACHE_EVERY_COMPILE = dict(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                           JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")


def tiny_config(**train):
  c = tiny.get_config()
  c.train.tensorboard = False
  c.train.eval_every = 0
  c.train.update(train)
  return c


def cli_env(devices: int = 8) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = xla_flags(devices)
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["PYTHONUNBUFFERED"] = "1"
  return env


def train_cmd(workdir, *overrides) -> list[str]:
  return [sys.executable, "-m", "muse_jax.train", "--config=configs/tiny.py",
          f"--workdir={workdir}", "--config.train.tensorboard=False", *overrides]


def run_cli(workdir, *overrides, devices=8, check=True):
  proc = subprocess.run(train_cmd(workdir, *overrides), cwd=REPO, env=cli_env(devices),
                        capture_output=True, text=True, timeout=300)
  if check and proc.returncode != 0:
    raise AssertionError(f"train failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


def flat(tree) -> dict[str, np.ndarray]:
  import jax
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def wait_for_step(workdir, step, proc, timeout=240):
  """Until `proc` (a CLI run) has logged step `step` or later in WORKDIR/metrics.jsonl."""
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f"process ended early:\n{proc.stdout.read()}\n{proc.stderr.read()}")
    if os.path.exists(path):
      with open(path) as f:
        lines = [x for x in f.read().splitlines() if x]
      if lines and max(int(x.split(",")[0].split(":")[1]) for x in lines) >= step:
        return
    time.sleep(0.01)
  raise AssertionError("timed out waiting for training progress")
