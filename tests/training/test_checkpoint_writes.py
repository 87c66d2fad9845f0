"""Failed writes stop a run at once with one line, and the checkpoints before them stay usable:
a disk that fills up under an asynchronous save, a checkpoint directory that turns read-only,
and a workdir that cannot be written at all (refused before training)."""
import contextlib
import os
import re

import pytest

from muse_jax.training.loop import Trainer, read_metrics
from muse_jax.workdir.access import UnwritableWorkdir, WorkdirWriteError
from tests.training.faults import FaultAt, fill, mounts_allowed, read_only, tmpfs
from tests.training.helpers import tiny_config


def config(num_steps, every_steps, keep=2):
  c = tiny_config(num_steps=num_steps, log_every=1)
  c.checkpoint.update(dict(every_steps=every_steps, keep=keep))
  return c


def resumes_from(config_, workdir, step):
  t = Trainer(config_, workdir)
  _, restored = t.initial_state()
  t.ckpt.close()
  assert restored == step


def test_a_full_disk_under_an_async_save_stops_the_run_at_once(tmp_path):
  """The checkpoint directory is a small tmpfs, filled up after the save of step 5: the save
  of step 10 fails in the background, and the run stops before another save would have
  noticed (step 15). Step 5 is intact although only one checkpoint is kept, and a rerun on a
  freed disk goes past step 10."""
  wd = str(tmp_path)
  c = config(num_steps=40, every_steps=5, keep=1)
  with tmpfs(os.path.join(wd, "checkpoints"), size="8m") as ckpts:
    t = Trainer(c, wd)
    ballast = []

    def fill_after_step_5_is_written():
      t.ckpt.wait()
      ballast.append(fill(ckpts))

    t.train_source = FaultAt(t.train_source, at=7, fault=fill_after_step_5_is_written)
    with pytest.raises(WorkdirWriteError) as e:
      t.run()
    msg = str(e.value)
    assert re.fullmatch(r"could not write checkpoint step 10 to \S+: \[Errno 28\] No space left "
                        r"on device\. Newest checkpoint: step 5 in \S+; free space or fix the "
                        r"permissions, then rerun the same command to resume", msg), msg
    last = read_metrics(wd)[-1]["step"]
    assert 10 <= last < 15, last  # stopped before the next save (step 15) would have looked
    os.remove(ballast[0])
    resumes_from(c, wd, 5)
    c.train.num_steps = 12
    assert Trainer(c, wd).run().step == 12


def test_a_read_only_checkpoint_dir_fails_the_next_save_and_keeps_the_last(tmp_path):
  wd = str(tmp_path)
  c = config(num_steps=40, every_steps=3)
  if os.geteuid() == 0 and not mounts_allowed():
    pytest.skip("a read-only directory needs a bind mount as root")
  t = Trainer(c, wd)
  with contextlib.ExitStack() as stack:

    def read_only_after_step_3_is_written():
      t.ckpt.wait()
      stack.enter_context(read_only(t.ckpt.directory))

    t.train_source = FaultAt(t.train_source, at=5, fault=read_only_after_step_3_is_written)
    with pytest.raises(WorkdirWriteError) as e:
      t.run()
  msg = str(e.value)
  assert re.fullmatch(r"could not write checkpoint step 6 to \S+: \[Errno (30|13)\] (Read-only "
                      r"file system|Permission denied)\. Newest checkpoint: step 3 in \S+; free "
                      r"space or fix the permissions, then rerun the same command to resume",
                      msg), msg
  assert read_metrics(wd)[-1]["step"] == 6  # stopped at the failed save itself
  resumes_from(c, wd, 3)


def test_an_unwritable_workdir_is_refused_before_training(tmp_path):
  wd = str(tmp_path / "wd")
  os.makedirs(wd)
  if os.geteuid() == 0 and not mounts_allowed():
    pytest.skip("a read-only directory needs a bind mount as root")
  with read_only(wd):
    with pytest.raises(UnwritableWorkdir) as e:
      Trainer(config(num_steps=4, every_steps=2), wd)
  assert re.fullmatch(r"cannot write to \S+/wd: \[Errno (30|13)\] (Read-only file system|"
                      r"Permission denied); choose another --workdir or fix its permissions or "
                      r"free space", str(e.value)), str(e.value)
  assert os.listdir(wd) == []
