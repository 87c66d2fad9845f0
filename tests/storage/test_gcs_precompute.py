"""Precompute with its workdir on gs:// (the GCS emulator of tests/gcs_emulator.py), and the
training input reading those shards from gs://: the shards, index entries and offset indexes
are byte-for-byte those of the same run on local disk, a rerun finds every shard done, and the
grain reader's first batches from gs:// equal those from the local copy."""
from __future__ import annotations

import os

import numpy as np
from etils import epath

from muse_jax.data import input_pipeline
from tests.gcs_emulator import BUCKET
from tests.precompute.test_precompute import _config, _run


class _Stage:
  """What make_token_source needs of a stage: its config and features (the tiny base's)."""

  def __init__(self, data_path):
    from configs import shapes_base_tiny
    from muse_jax.training.base_stage import BaseStage
    c = shapes_base_tiny.get_config()
    c.model.update(dict(grid_size=4, text_length=16))
    c.data.update(dict(path=data_path, reader="grain"))
    c.train.batch_size = 4
    self.config = c
    self._features = BaseStage.features(self)

  def features(self):
    return self._features


def _files(root) -> dict[str, bytes]:
  """{relative path: bytes} of every file under root (epath has no recursive glob on gs://)."""
  out, todo = {}, [epath.Path(root)]
  while todo:
    for p in todo.pop().iterdir():
      if p.is_dir():
        todo.append(p)
      else:
        out[os.path.relpath(os.fspath(p), os.fspath(root))] = p.read_bytes()
  return out


def test_precompute_on_gcs_matches_local_and_trains_from_gcs(gcs, precompute_models, tmp_path,
                                                             monkeypatch):
  monkeypatch.chdir(tmp_path)  # a URL mistaken for a local path would land here
  models, _ = precompute_models
  remote, local = f"gs://{BUCKET}/precompute/run", str(tmp_path / "local")
  manifest, _ = _run(remote, models)
  local_manifest, _ = _run(local, models)
  assert manifest["splits"] == local_manifest["splits"]
  got, want = _files(remote), _files(local)
  assert sorted(got) == sorted(want)
  for name in want:
    if name != "manifest.json":  # it holds the workdir's path
      assert got[name] == want[name], name
  assert any(n.endswith(".tfrecord.idx") for n in got) and "skipped.jsonl" in got
  _, log = _run(remote, models, _config())
  assert "recomputing" not in log
  assert not os.path.exists(tmp_path / "gs:")

  sources = [input_pipeline.make_token_source(_Stage(p), "train", 0, 1) for p in (remote, local)]
  for _ in range(3):
    a, b = (next(s) for s in sources)
    for k in b:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
