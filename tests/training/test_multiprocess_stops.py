"""Stops of a two-process run (2 processes x 4 CPU devices over gloo, the tiny config).

A SIGTERM to one process only must stop both at the same step, with one complete checkpoint,
and the run resumed after three such stops must equal an uninterrupted run bit for bit. A
process killed with SIGKILL must make the other exit instead of hanging in a collective:
JAX's heartbeat ends it (status 134, SIGABRT) within the heartbeat timeout.

Each run is two fresh processes, and starting one (imports, jax.distributed, compiling the
tiny step) costs most of the time: the stop test starts 5 runs (3 stopped, the resume to the
end, the uninterrupted reference) and the SIGKILL test 1: together about six times the
existing two-process test. The signal times are drawn from a seeded generator, so a failure
reproduces.
"""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time

import numpy as np
import pytest

from muse_jax.training.loop import Trainer, read_metrics
from tests.training.helpers import (CACHE_EVERY_COMPILE, REPO, cli_env, flat, tiny_config,
                                    train_cmd)

CHECK_EVERY = 3
STEPS = 40
# Logged steps (every 2nd) add the processes' save-failure all-gather, so both kinds of
# agreement interleave with the train steps.
ARGS = [f"--config.train.num_steps={STEPS}", "--config.train.log_every=2",
        "--config.train.eval_every=0", "--config.checkpoint.every_steps=1000",
        "--config.checkpoint.keep=10", f"--config.checkpoint.stop_check_every={CHECK_EVERY}"]


def config():
  c = tiny_config(num_steps=STEPS, log_every=2)
  c.checkpoint.update(dict(every_steps=1000, keep=10, stop_check_every=CHECK_EVERY))
  return c


def free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def start(workdir, logs, *extra, heartbeat=None):
  """Two processes of one run; each writes stdout+stderr to logs/<run>.<i>.log."""
  env = cli_env(devices=4)
  # Every run compiles the same step: after the first, the processes read it from the cache.
  env.update(CACHE_EVERY_COMPILE)
  port, run = free_port(), sum(f.endswith(".0.log") for f in os.listdir(logs))
  procs = []
  for i in range(2):
    cmd = train_cmd(workdir, *ARGS, *extra) + [
        f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}",
        "--cpu_collectives=gloo"]
    if heartbeat:
      cmd.append(f"--heartbeat_timeout={heartbeat}")
    log = open(os.path.join(logs, f"{run}.{i}.log"), "w")
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    procs[-1].log = log.name
  return procs


def output(p) -> str:
  with open(p.log) as f:
    return f.read()


def last_step(workdir) -> int:
  try:
    return max((r["step"] for r in read_metrics(workdir)), default=0)
  except (FileNotFoundError, ValueError):
    return 0


def wait_for(workdir, step, procs, timeout=600):
  deadline = time.time() + timeout
  while last_step(workdir) < step:
    ended = [p for p in procs if p.poll() is not None]
    if ended or time.time() > deadline:
      for p in procs:
        p.kill()
      raise AssertionError(f"process ended early ({ended[0].returncode}):\n"
                           f"{output(ended[0])[-3000:]}" if ended else "timed out")
    time.sleep(0.02)


def finish(procs, timeout=600) -> list[int]:
  try:
    return [p.wait(timeout=max(1, timeout)) for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    raise AssertionError("a process did not exit:\n" + "\n".join(output(p)[-2000:]
                                                                  for p in procs))


def restore_verified(workdir, step):
  """Step `step`'s state, checked against its integrity record (CorruptCheckpoint if not)."""
  t = Trainer(config(), workdir)
  try:
    state, data = t.ckpt.restore(step, t.abstract_with_shardings())
  finally:
    t.ckpt.close()
  return flat(state), data


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
  return str(tmp_path_factory.mktemp("logs"))


def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes_exactly(tmp_path, logs):
  rng = random.Random(23)
  stopped, ref = str(tmp_path / "stopped"), str(tmp_path / "ref")
  saved = []
  for _ in range(3):
    start_step = last_step(stopped)
    procs = start(stopped, logs)
    wait_for(stopped, start_step + rng.randint(1, 4), procs)
    time.sleep(rng.uniform(0, 0.5))
    victim = rng.randrange(2)
    signalled_at = last_step(stopped)
    procs[victim].send_signal(signal.SIGTERM)
    assert finish(procs) == [143, 143], [output(p)[-2000:] for p in procs]
    steps = {int(m) for p in procs for m in re.findall(r"preempted at step (\d+)", output(p))}
    assert len(steps) == 1, steps  # one message per process, both the same step
    step = steps.pop()
    assert step % CHECK_EVERY == 0 and signalled_at <= step, (step, signalled_at)
    assert step - signalled_at <= CHECK_EVERY + 2, (step, signalled_at)
    _, data = restore_verified(stopped, step)
    assert data == {"position": step}
    saved.append(step)
  assert saved == sorted(set(saved)), saved
  assert finish(start(stopped, logs)) == [0, 0]
  assert finish(start(ref, logs)) == [0, 0]
  a, _ = restore_verified(stopped, STEPS)
  b, _ = restore_verified(ref, STEPS)
  for k in b:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  la, lb = read_metrics(stopped), read_metrics(ref)
  assert [r["step"] for r in la] == list(range(1, STEPS + 1))
  np.testing.assert_array_equal([r["loss"] for r in la], [r["loss"] for r in lb])


def test_sigkill_of_one_process_ends_the_other_within_the_heartbeat_timeout(tmp_path, logs):
  """The survivor is stuck in a collective; JAX's heartbeat (set to 5 s) must end it. Gloo
  can abort the survivor first, when the kill cuts a transfer short (it reports a transfer
  whose size does not match, seen on a busy machine): the same status, within the same time."""
  wd = str(tmp_path)
  procs = start(wd, logs, "--config.train.num_steps=100000", heartbeat=5)
  wait_for(wd, 3, procs)
  procs[1].kill()
  killed = time.time()
  status = finish(procs[:1], timeout=60)
  took = time.time() - killed
  out = output(procs[0])
  assert status == [-signal.SIGABRT], out[-3000:]  # a shell reports it as 134
  assert "another task died" in out or "gloo::EnforceNotMet" in out, out[-3000:]
  assert took < 30, took
