"""What a run resumes from: never a non-finite or corrupt checkpoint.

One tiny run (checkpoints at steps 2 and 4, both kept) is trained once per module; each
corruption test damages step 4 of a copy and checks that the resume falls back to step 2,
bit for bit, saying so in one line on stderr.
"""
import glob
import os
import re
import shutil

import jax
import numpy as np
import pytest

from muse_jax.training.loop import NonFiniteLoss, Trainer, read_metrics, train
from muse_jax.workdir.checkpointer import Checkpointer, NoIntactCheckpoint
from tests.training.helpers import flat, tiny_config


def config(**train):
  c = tiny_config(**{"num_steps": 4, "log_every": 1, **train})
  c.checkpoint.update(dict(every_steps=2, keep=2))
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(workdir with checkpoints 2 and 4, step 2's state as numpy)."""
  wd = str(tmp_path_factory.mktemp("trained"))
  train(config(), wd)
  t = Trainer(config(), wd)
  state, _ = t.ckpt.restore(2, t.abstract_with_shardings())
  t.ckpt.close()
  return wd, flat(state)


def data_files(step_dir):
  return sorted(glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True),
                key=os.path.getsize, reverse=True)


def truncate(step_dir):
  """Every data file cut in half (OCDBT leaves superseded files that a restore never reads)."""
  for path in data_files(step_dir):
    os.truncate(path, os.path.getsize(path) // 2)


def _flip_bit(path, offset):
  with open(path, "r+b") as f:
    f.seek(offset)
    byte = f.read(1)[0]
    f.seek(offset)
    f.write(bytes([byte ^ 1]))


def _raw_restore(step_dir):
  """The state as Orbax alone restores it (no integrity check), or the exception it raised."""
  import orbax.checkpoint as ocp
  try:
    with ocp.CheckpointManager(os.path.dirname(step_dir), item_names=("state",)) as m:
      out = m.restore(int(os.path.basename(step_dir)),
                      args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return flat(out.state)
  except Exception as e:  # noqa: BLE001 - the caller tries another bit
    return e


def flip_one_bit(step_dir):
  """One bit flipped in a data file where Orbax restores it silently as a different number.
  Flips in index nodes fail their CRC, flips in files it never reads change nothing, and the
  arrays are zstd-compressed, so a flip may also fail decompression: several places in each
  file are tried, since where the arrays lie depends on the order of the async writes."""
  before = _raw_restore(step_dir)
  assert isinstance(before, dict), f"the undamaged checkpoint does not restore: {before!r}"
  failures = []
  for path in data_files(step_dir):
    size = os.path.getsize(path)
    for offset in sorted({size * j // 8 for j in range(1, 8)}, key=lambda o: abs(o - size // 2)):
      _flip_bit(path, offset)
      after = _raw_restore(step_dir)
      if isinstance(after, dict) and any(not np.array_equal(after[k], before[k]) for k in before):
        return
      failures.append(after if isinstance(after, Exception) else "no change")
      _flip_bit(path, offset)  # undo
  raise AssertionError(f"no bit flip that Orbax restores silently; tried {len(failures)}, "
                       f"first outcomes: {failures[:3]!r}")


def delete_metadata(step_dir):
  os.remove(os.path.join(step_dir, "state", "_METADATA"))


def garble_metadata(step_dir):
  with open(os.path.join(step_dir, "state", "_METADATA"), "w") as f:
    f.write("{not json")


def delete_state_item(step_dir):
  shutil.rmtree(os.path.join(step_dir, "state"))


def empty_step_dir(step_dir):
  shutil.rmtree(step_dir)
  os.mkdir(step_dir)


def copy_of(trained, tmp_path):
  wd = str(tmp_path / "wd")
  shutil.copytree(trained[0], wd)
  return wd


@pytest.mark.parametrize("damage", [truncate, flip_one_bit, delete_metadata, garble_metadata,
                                    delete_state_item, empty_step_dir])
def test_a_damaged_newest_checkpoint_falls_back_to_the_intact_one(trained, tmp_path, capsys,
                                                                  damage):
  wd = copy_of(trained, tmp_path)
  damage(os.path.join(wd, "checkpoints", "4"))
  t = Trainer(config(), wd)
  state, step = t.initial_state()
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert step == 2
  restored = flat(state)
  for k, v in trained[1].items():
    np.testing.assert_array_equal(restored[k], v, err_msg=k)
  assert len(err) == 1, err
  if damage is flip_one_bit:
    assert "(CorruptCheckpoint: checksum mismatch in " in err[0], err[0]
  assert re.match(r"warning: checkpoint step 4 in \S+ is unusable \(.+\); moved it to "
                  r"\S+checkpoints_rejected/4 and resuming from step 2$", err[0]), err[0]
  assert t.ckpt.all_steps() == [2]  # later saves and readers never meet step 4 again
  assert os.listdir(os.path.join(wd, "checkpoints_rejected")) == ["4"]
  t.ckpt.close()


def test_no_intact_checkpoint_refuses_to_start_and_moves_nothing(trained, tmp_path):
  wd = copy_of(trained, tmp_path)
  truncate(os.path.join(wd, "checkpoints", "4"))
  delete_metadata(os.path.join(wd, "checkpoints", "2"))
  t = Trainer(config(), wd)
  with pytest.raises(NoIntactCheckpoint, match=r"no checkpoint in \S+ can be restored with this "
                     r"config \(step 4: .+; step 2: .+\); move them out of the way"):
    t.initial_state()
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2", "4"]
  assert not os.path.exists(os.path.join(wd, "checkpoints_rejected"))
  t.ckpt.close()


def test_a_checkpoint_without_checksums_restores_with_a_note(trained, tmp_path, capsys):
  """Checkpoints written before the integrity record existed still resume."""
  wd = copy_of(trained, tmp_path)
  shutil.rmtree(os.path.join(wd, "checkpoints", "4", "integrity"))
  t = Trainer(config(), wd)
  _, step = t.initial_state()
  assert step == 4
  assert "checkpoint step 4 was written without checksums" in capsys.readouterr().err
  t.ckpt.close()


def test_a_non_finite_state_is_never_saved_and_the_named_checkpoint_is_good(tmp_path):
  """An absurd learning rate, a save every step: steps 1-4 stay finite, step 5's update is
  NaN. The checkpoint the error names is finite and a rerun with a sane learning rate
  resumes from it and trains on."""
  wd = str(tmp_path)
  c = tiny_config(num_steps=10, log_every=1)
  c.optimizer.update(dict(learning_rate=1e8, warmup_steps=10))
  c.checkpoint.update(dict(every_steps=1, keep=2))
  with pytest.raises(NonFiniteLoss) as e:
    train(c, wd)
  msg = str(e.value)
  m = re.search(r"Last good checkpoint: step (\d+) in \S+\. Lower the learning rate or check "
                r"the data, then rerun to resume from that checkpoint$", msg)
  assert m, msg
  good = int(m.group(1))
  ckpt = Checkpointer(os.path.join(wd, "checkpoints"), c.checkpoint)
  assert good >= 1 and ckpt.latest_step() == good, (msg, ckpt.all_steps())
  # the checkpoint whose parameters the failing step started from is out of the way
  assert os.listdir(os.path.join(wd, "checkpoints_rejected")) == [str(good + 1)], msg
  t = Trainer(c, wd)
  state, data = ckpt.restore(good, t.abstract_with_shardings())
  ckpt.close()
  t.ckpt.close()
  assert all(np.isfinite(v).all() for v in jax.tree.leaves(jax.device_get(state)))
  # the advice holds: a lower learning rate resumes from that checkpoint and trains on
  c.optimizer.update(dict(learning_rate=1e-3, warmup_steps=0))
  c.train.num_steps = good + 3
  result = train(c, wd)
  assert result.step == good + 3
  losses = [r["loss"] for r in read_metrics(wd) if r["step"] > good]
  assert len(losses) == 3 and np.isfinite(losses).all(), losses
