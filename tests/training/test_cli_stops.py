"""How `python -m muse_jax.train` ends when it cannot go on: one line on stderr, no
traceback, and the exit status that cli.py documents."""
import logging
import os
import signal
import struct
import subprocess

import pytest

from muse_jax import cli
from muse_jax.training.loop import NonFiniteLoss, Preempted, Trainer, read_metrics
from muse_jax.weights.safetensors_io import WeightsError
from muse_jax.workdir.access import UnwritableWorkdir, WorkdirWriteError
from muse_jax.workdir.checkpointer import NoIntactCheckpoint
from tests.training.faults import fill, tmpfs
from tests.training.helpers import REPO, cli_env, tiny_config, train_cmd, wait_for_step


def stderr_lines(err):
  return [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("error, status", [
    (NoIntactCheckpoint("no checkpoint in /w can be restored"), 2),
    (UnwritableWorkdir("cannot write to /w: [Errno 30] Read-only file system"), 2),
    (WeightsError("/w.safetensors is not a readable safetensors file"), 2),
    (NonFiniteLoss("loss is nan at step 7"), 3),
    (WorkdirWriteError("could not write checkpoint step 9 to /w"), 5),
    (Preempted(9, "/w", signal.SIGINT), 130),
    (KeyboardInterrupt(), 130),
    (Preempted(9, "/w", signal.SIGTERM), 143),
])
def test_each_stop_maps_to_one_line_and_its_status(capsys, error, status):
  def fail():
    raise error
  with pytest.raises(SystemExit) as e:
    cli.run_or_exit(fail)
  assert e.value.code == status
  lines = stderr_lines(capsys.readouterr().err)
  assert len(lines) == 1 and (str(error) in lines[0] or not str(error)), lines


def test_out_of_memory_is_one_line_with_advice_and_status_6(capsys):
  """A real XLA allocation failure (16 TiB on the CPU backend) ends as one line that names
  what to lower, with the status cli.py documents; other runtime errors are not caught."""
  import jax
  import jax.numpy as jnp
  with pytest.raises(SystemExit) as e:
    cli.run_or_exit(lambda: jax.jit(lambda: jnp.ones((2**42,), jnp.float32))()
                    .block_until_ready())
  assert e.value.code == cli.EXIT_OUT_OF_MEMORY == 6
  lines = stderr_lines(capsys.readouterr().err)
  assert len(lines) == 1 and "RESOURCE_EXHAUSTED" in lines[0], lines
  assert "batch_size" in lines[0] and "XLA_PYTHON_CLIENT_MEM_FRACTION" in lines[0]

  def other():
    raise jax.errors.JaxRuntimeError("INTERNAL: something else")
  with pytest.raises(jax.errors.JaxRuntimeError):
    cli.run_or_exit(other)


def test_orbax_save_errors_logged_by_asyncio_are_dropped_and_others_kept():
  """When a save fails, asyncio logs each Orbax task that ended with the error as its event
  loop shuts down, racing the one-line report; only those records are dropped."""
  seen = []

  class Keep(logging.Handler):
    def emit(self, record):
      seen.append(record.getMessage())

  logger = logging.getLogger("asyncio")
  handler = Keep()
  logger.addHandler(handler)
  try:
    def fail():
      logger.error("unhandled exception during asyncio.run() shutdown\ntask: <Task finished "
                   "coro=<async_serialize_from_host() defined at /venv/lib/python3.12/"
                   "site-packages/orbax/checkpoint/_src/serialization/serialization.py:126>>")
      logger.error("an asyncio error of another library")
      raise WorkdirWriteError("could not write checkpoint step 9 to /w")
    with pytest.raises(SystemExit):
      cli.run_or_exit(fail)
  finally:
    logger.removeHandler(handler)
    logger.filters.clear()
  assert seen == ["an asyncio error of another library"]


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
  wd = str(tmp_path)
  args = ["--config.train.num_steps=100000", "--config.checkpoint.every_steps=100000"]
  # As a terminal starts it, with Ctrl-C's default action, even where this test runs as a
  # background job of a shell without job control: its children start with SIGINT ignored,
  # which the trainer then keeps (as under nohup). A handler here is reset by exec.
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    proc = subprocess.Popen(train_cmd(wd, *args), cwd=REPO, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  finally:
    signal.signal(signal.SIGINT, previous)
  wait_for_step(wd, 5, proc)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err
  lines = stderr_lines(err)
  assert len(lines) == 1 and lines[0].startswith("interrupted (Ctrl-C) at step "), err
  assert lines[0].endswith("run the same command again to resume"), err
  steps = sorted(int(s) for s in os.listdir(os.path.join(wd, "checkpoints")))
  assert len(steps) == 1 and steps[0] >= 5
  assert read_metrics(wd)[-1]["step"] == steps[0]  # no work lost since the last step logged


def test_a_full_disk_is_one_line_and_exit_5_and_the_last_checkpoint_resumes(tmp_path):
  wd = str(tmp_path / "wd")
  args = ["--config.train.num_steps=100000", "--config.checkpoint.every_steps=5",
          "--config.train.log_every=1", "--config.train.eval_every=0"]
  with tmpfs(wd, size="8m"):
    proc = subprocess.Popen(train_cmd(wd, *args), cwd=REPO, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(wd, 11, proc)  # step 10 is being written or written
    ballast = fill(wd)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 5, err
    lines = stderr_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: could not write "), err
    assert "[Errno 28] No space left on device" in lines[0], err
    assert lines[0].endswith("then rerun the same command to resume"), err
    os.remove(ballast)
    t = Trainer(tiny_config(), wd)
    _, step = t.initial_state()
    t.ckpt.close()
    assert step >= 5 and step % 5 == 0


def test_a_bad_safetensors_file_is_one_line_and_exit_2(tmp_path):
  bad = str(tmp_path / "lpips.safetensors")
  with open(bad, "wb") as f:
    f.write(struct.pack("<Q", 1 << 40) + b"{}")  # a header length far past the file
  cmd = train_cmd(str(tmp_path / "wd"), f"--config.loss.perceptual_weights={bad}")
  cmd[3] = "--config=configs/vqgan_tiny.py"
  proc = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2, proc.stderr
  assert stderr_lines(proc.stderr) == [
      f"error: {bad}: not a readable safetensors file (Error while deserializing header: "
      "header too large)"], proc.stderr
