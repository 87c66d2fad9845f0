"""A resumed run keeps the learning-rate schedule it started with, refuses to run past its end
unless told how, and refuses a model that does not fit its checkpoint (training/resume.py).

In-process on a workdir holding a config.json and an empty checkpoint directory, which is what
Orbax lists as a finished step; the CLI runs are in test_resume_and_signals.py."""
from __future__ import annotations

import os

import pytest

from muse_jax.configs.checks import ConfigError
from muse_jax.training.optimizer import make_schedule, schedule_length
from muse_jax.training.resume import resolve_schedule, state_keys_changed
from muse_jax.workdir.saved_config import saved_config, write_config
from tests.training.helpers import tiny_config


def workdir_at(tmp_path, step: int, **train):
  """A workdir whose previous start saved tiny_config(**train) and reached `step`."""
  wd = str(tmp_path)
  write_config(wd, tiny_config(**train))
  os.makedirs(os.path.join(wd, "checkpoints", str(step)))
  return wd


def rate(c, step):
  return float(make_schedule(c.optimizer, schedule_length(c.train))(step))


def test_a_first_start_plans_the_schedule_over_num_steps(tmp_path):
  c = tiny_config(num_steps=40)
  assert resolve_schedule(c, str(tmp_path)) is None
  assert schedule_length(c.train) == 40


def test_a_resumed_run_keeps_the_schedule_it_started_with(tmp_path):
  wd = workdir_at(tmp_path, 20, num_steps=30, schedule_steps=40)
  first = tiny_config(num_steps=30, schedule_steps=40)
  c = tiny_config(num_steps=40)  # the same command with more steps, no schedule_steps
  assert resolve_schedule(c, wd) is None
  assert c.train.schedule_steps == 40
  assert [rate(c, s) for s in range(18, 40)] == [rate(first, s) for s in range(18, 40)]


def test_running_past_the_end_of_a_cosine_schedule_is_refused_with_how_to_extend(tmp_path):
  """The review's case: config.json written before schedule_steps existed (num_steps=20 is
  its horizon), rerun with num_steps=40: the rate would have jumped from ~3e-5 to ~2e-3."""
  wd = workdir_at(tmp_path, 20, num_steps=20)
  with open(os.path.join(wd, "config.json")) as f:
    text = f.read().replace('"schedule_steps": 0,', "")
  with open(os.path.join(wd, "config.json"), "w") as f:
    f.write(text)
  assert "schedule_steps" not in saved_config(wd)["train"]
  with pytest.raises(ConfigError) as e:
    resolve_schedule(tiny_config(num_steps=40), wd)
  msg = str(e.value)
  assert "\n" not in msg and "train.num_steps=40 goes past the end" in msg, msg
  assert "--config.train.schedule_steps=40 (re-plans the cosine: the rate at step 21" in msg
  assert "--config.train.schedule_steps=20 (keeps it)" in msg

  keep = tiny_config(num_steps=40, schedule_steps=20)
  assert resolve_schedule(keep, wd) is None
  assert rate(keep, 25) == rate(keep, 20) == rate(tiny_config(num_steps=20), 20)

  replan = tiny_config(num_steps=40, schedule_steps=40)
  note = resolve_schedule(replan, wd)
  assert note.startswith("train.schedule_steps=40 re-plans this run's learning-rate schedule "
                         "(it was 20): the rate at step 21 is"), note
  assert rate(replan, 20) > 10 * rate(tiny_config(num_steps=20), 19)


def test_a_constant_schedule_extends_without_asking(tmp_path):
  wd = workdir_at(tmp_path, 20, num_steps=20)
  c = tiny_config(num_steps=40)
  c.optimizer.schedule = "constant"
  assert resolve_schedule(c, wd) is None and c.train.schedule_steps == 20


def test_the_keys_that_decide_the_state_are_named():
  saved = tiny_config().to_dict()
  c = tiny_config()
  c.model.update(dict(hidden_size=48, dtype="bfloat16", remat="full"))
  c.train.ema_decay = 0.9
  assert state_keys_changed(c, saved) == ["model.hidden_size=32 -> 48",
                                          "train.ema_decay > 0=False -> True"]
