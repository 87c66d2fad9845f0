"""The trainer's input: a missing or corrupt manifest, or a record that cannot be read mid-run,
is an InputError (one line, exit 2 at the entry points) that names the path; the wrapped source
still saves and restores its position (training/inputs.py)."""
from __future__ import annotations

import os

import pytest

from muse_jax.configs.checks import ConfigError
from muse_jax.data import input_pipeline as ip
from muse_jax.precompute import shards
from muse_jax.training.inputs import InputError, open_input
from tests.data.test_input_pipeline import _config, _Stage, write_dataset


class _TokenStage(_Stage):
  def make_source(self, split, process_index, process_count):
    return ip.make_token_source(self, split, process_index, process_count)


def test_a_missing_or_corrupt_manifest_names_the_path(tmp_path):
  with pytest.raises(InputError) as e:
    open_input(_TokenStage(_config(tmp_path / "missing")), "train", 0, 1)
  assert str(e.value).startswith(f"the train input: no manifest.json in '{tmp_path}/missing'")
  assert isinstance(e.value, ConfigError)
  os.makedirs(tmp_path / "corrupt")
  (tmp_path / "corrupt" / "manifest.json").write_text('{"splits": {"tr')
  with pytest.raises(InputError) as e:
    open_input(_TokenStage(_config(tmp_path / "corrupt")), "train", 0, 1)
  assert str(e.value).startswith(f"data.path='{tmp_path}/corrupt': a manifest is not valid "
                                 "JSON"), str(e.value)


def test_an_unreadable_record_mid_run_is_an_input_error(tmp_path):
  write_dataset(str(tmp_path))
  bad = os.path.join(str(tmp_path), "shards", shards.shard_name("train", 0, 4) + ".tfrecord")
  with open(bad, "r+b") as f:  # one bit of the last file's first record: its CRC fails
    f.seek(20)
    byte = f.read(1)
    f.seek(20)
    f.write(bytes([byte[0] ^ 1]))
  # The tf reader stops at a record whose framing CRC fails (grain and numpy skip and count it).
  src = open_input(_TokenStage(_config(tmp_path, batch=2, reader="tf")), "train", 0, 1)
  src.set_state({"position": 4})
  assert src.get_state()["positions"] == [4]
  with pytest.raises(InputError) as e:
    for _ in range(18):  # one epoch and a batch
      next(src)
  assert str(e.value).startswith(f"the train input: unreadable record in {bad}"), str(e.value)
