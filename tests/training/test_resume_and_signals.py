"""Process-level behaviour of `python -m muse_jax.train`: exact resume after SIGKILL,
SIGTERM checkpointing, the CLI resume message, and a real two-process run."""
import os
import signal
import subprocess
import sys

import numpy as np

from muse_jax.training.loop import read_metrics
from muse_jax.workdir.checkpointer import Checkpointer
from tests.training.helpers import (REPO, cli_env, run_cli, tiny_config, train_cmd,
                                    wait_for_step)


def restore_params(workdir, step):
  import orbax.checkpoint as ocp
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                             item_names=("state", "data")) as m:
    out = m.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                  data=ocp.args.JsonRestore()))
  from tests.training.helpers import flat
  return flat(out.state), dict(out.data)


STEPS = ["--config.train.num_steps=200", "--config.checkpoint.every_steps=20",
         "--config.train.log_every=200", "--config.train.eval_every=0"]


def test_resume_after_sigkill_is_exact(tmp_path):
  full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
  proc = subprocess.Popen(train_cmd(killed, *STEPS), cwd=REPO, env=cli_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  wait_for_step(killed, 50, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps_at_kill = Checkpointer(os.path.join(killed, "checkpoints"),
                               tiny_config().checkpoint).all_steps()
  assert steps_at_kill and max(steps_at_kill) < 200, steps_at_kill
  resumed = run_cli(killed, *STEPS)
  assert f"Resuming from step {max(steps_at_kill)}" in resumed.stdout
  run_cli(full, *STEPS)
  a, a_data = restore_params(killed, 200)
  b, b_data = restore_params(full, 200)
  assert a_data == b_data == {"position": 200}
  for k in b:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  la, lb = read_metrics(killed), read_metrics(full)
  assert [r["step"] for r in la] == list(range(1, 201))
  np.testing.assert_array_equal([r["loss"] for r in la], [r["loss"] for r in lb])


def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
  wd = str(tmp_path)
  args = ["--config.train.num_steps=100000", "--config.checkpoint.every_steps=100000"]
  proc = subprocess.Popen(train_cmd(wd, *args), cwd=REPO, env=cli_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  wait_for_step(wd, 5, proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err
  assert "preempted at step" in err and "run the same command again to resume" in err
  steps = Checkpointer(os.path.join(wd, "checkpoints"), tiny_config().checkpoint).all_steps()
  assert len(steps) == 1 and 5 <= steps[0] < 100000
  last = read_metrics(wd)[-1]["step"]
  assert last == steps[0]


def test_cli_trains_then_resumes_to_more_steps(tmp_path):
  """The README's commands: a schedule planned for 40 steps, stopped at 20 and resumed to 40,
  keeps its learning rate; going past 40 or changing the model is refused in one line (these
  two run concurrently and stop before compiling)."""
  wd = str(tmp_path)
  first = run_cli(wd, "--config.train.num_steps=20", "--config.train.schedule_steps=40")
  assert "Starting a new run" in first.stdout
  assert os.path.isdir(os.path.join(wd, "checkpoints", "20"))
  second = run_cli(wd, "--config.train.num_steps=40")
  assert "Resuming from step 20" in second.stdout
  assert "40/40" in second.stdout
  records = [r for r in read_metrics(wd) if "loss" in r]
  assert records[-1]["step"] == 40
  lr = {r["step"]: r["learning_rate"] for r in records if "learning_rate" in r}
  assert lr[21] < lr[20] < lr[19], lr  # the cosine goes on down, no re-warm

  refused = {"past the schedule": (["--config.train.num_steps=60"],
                                   "error: train.num_steps=60 goes past the end of this run's "
                                   "learning-rate schedule (train.schedule_steps=40"),
             "another model": (["--config.train.num_steps=40", "--config.model.hidden_size=48"],
                               f"error: the checkpoint at step 40 in {wd} holds another model "
                               f"than this config builds: the config differs from {wd}/"
                               "config.json in model.hidden_size=32 -> 48; rerun with")}
  procs = {name: subprocess.Popen(train_cmd(wd, *args), cwd=REPO, env=cli_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for name, (args, _) in refused.items()}
  for name, proc in procs.items():
    _, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{err[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith(refused[name][1]), f"{name}:\n{err}"


def test_two_process_run_trains_checkpoints_and_matches_one_process(tmp_path):
  """Two real processes x 4 CPU devices over gloo, started by launch/local.py, with the
  evaluation of samples during training on (eval.samples): every process samples (the rows
  sharded over the 8 devices, the parameters over fsdp), process 0 scores and logs. The
  one-process run evaluates nothing: the losses show that the evaluation changes nothing in
  the training."""
  from tests.encoders.test_text_tokenizer import train_spiece
  from tests.evaluation.helpers import shapes_captions, write_sampling_chain
  (tmp_path / "spiece").mkdir()
  pre = write_sampling_chain(str(tmp_path), train_spiece(str(tmp_path / "spiece")))
  (tmp_path / "captions.txt").write_text("\n".join(shapes_captions(8)) + "\n")
  two, one = str(tmp_path / "two"), str(tmp_path / "one")
  args = ["--config.train.num_steps=6", "--config.checkpoint.every_steps=3",
          "--config.mesh.fsdp=2", "--config.train.eval_every=0", "--config.model.text_dim=32",
          "--config.eval.samples.every=3", f"--config.eval.samples.precompute={pre}",
          f"--config.eval.samples.captions={tmp_path / 'captions.txt'}",
          "--config.eval.samples.batch_size=8", "--config.eval.samples.sampling.base_steps=2"]
  launcher = [sys.executable, "launch/local.py", "--num_processes=2",
              "--devices_per_process=4", "--"] + train_cmd(two, *args)[1:]
  proc = subprocess.run(launcher, cwd=REPO, env=cli_env(), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stdout[-4000:]
  assert "[0] Done: 6 steps" in proc.stdout and "[1]" in proc.stdout
  assert "[0] samples @ 3" in proc.stdout and "[1] samples @" not in proc.stdout
  assert sorted(os.listdir(os.path.join(two, "checkpoints"))) == ["3", "6"]
  evals = {r["step"]: r for r in read_metrics(two) if "eval/compositional/captions/overall" in r}
  assert sorted(evals) == [3, 6]
  for r in evals.values():
    assert all(0.0 <= r[f"eval/compositional/captions/{k}"] <= 1.0
               for k in ("count", "colour", "shape", "position", "overall"))
  run_cli(one, *args, "--config.eval.samples.every=0")
  losses = [[r["loss"] for r in read_metrics(wd) if "loss" in r] for wd in (two, one)]
  assert len(losses[0]) == 6
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
