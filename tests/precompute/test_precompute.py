"""Precompute on CPU with tiny random models: output, resume after SIGKILL, two processes."""
import dataclasses
import glob
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from configs import shapes_precompute
from muse_jax.data import input_pipeline, records
from muse_jax.data.shapes import dataset as shapes
from muse_jax.precompute import run as precompute
from tests.training.helpers import CACHE_EVERY_COMPILE, cli_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 60 train examples in shards of 16 raw records (the last one 12), batches of 8; 16 heldout.
OVERRIDES = {
    "data.shapes.num_train": 60, "data.shapes.num_heldout": 16,
    "tokenizer.resolution": 32, "sr_tokenizer.resolution": 64,
    "precompute.batch_size": 8, "precompute.examples_per_shard": 16,
    "precompute.spiece_corpus_size": 200, "precompute.log_every": 1,
}


def _config(**extra):
  c = shapes_precompute.get_config()
  for key, value in {**OVERRIDES, **extra}.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _flags(**extra):
  return [f"--config.{k}={v}" for k, v in {**OVERRIDES, **extra}.items()]


def _env(devices):
  """The subprocesses compile the same random-init and model ops: they share the run's
  compilation cache (tests/conftest.py)."""
  return {**cli_env(devices), **CACHE_EVERY_COMPILE}


def _cmd(workdir, *flags):
  return [sys.executable, "-m", "muse_jax.precompute", "--config=configs/shapes_precompute.py",
          f"--workdir={workdir}", *flags]


@pytest.fixture(scope="module")
def models(precompute_models):
  """The run's models (conftest.py: built once for the precompute tests)."""
  return precompute_models[0]


def _run(workdir, models, config=None, calls=None):
  out = io.StringIO()

  def models_fn(config, mesh, spiece):
    m = dataclasses.replace(models)
    if calls is not None:
      def run(*args):
        calls.append(len([c for c in args[2] if c]))
        return precompute.Models.run(m, *args)
      m.run = run
    return m

  manifest = precompute.run_precompute(config or _config(), str(workdir), stream=out,
                                       models_fn=models_fn)
  return manifest, out.getvalue()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, models):
  workdir = tmp_path_factory.mktemp("reference")
  manifest, log = _run(workdir, models)
  return str(workdir), manifest, log


def _tree(workdir):
  """{relative path: bytes} of shards, index entries, manifest and spiece model."""
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, "**", "*"), recursive=True)):
    if os.path.isfile(path):
      out[os.path.relpath(path, workdir)] = open(path, "rb").read()
  return out


def _read_split(workdir, manifest, split):
  spec = records.RecordSpec.from_json(manifest["spec"])
  out = {}
  for f in manifest["splits"][split]["files"]:
    for raw in records.read_tfrecord(os.path.join(workdir, "shards", f)):
      ex = records.decode_example(raw, spec)
      out[ex["id"]] = ex
  return out


def test_output_records_manifest_and_progress(reference, models):
  workdir, manifest, log = reference
  spec = manifest["spec"]
  assert spec == {"grid_lo": 4, "grid_hi": 8, "codebook_size": 64, "text_dim": 32,
                  "text_max_length": 16}
  train = manifest["splits"]["train"]
  assert train["files"] == [f"train-00000-{k:05d}.tfrecord" for k in range(4)]
  assert train["records_per_file"] == [16, 16, 16, 12]
  assert (train["records"], train["seen"], train["skipped"]) == (60, 60, {})
  assert manifest["splits"]["heldout"]["records"] == 16
  assert not glob.glob(os.path.join(workdir, "**", "*.tmp-*"), recursive=True)
  # Records hold what the models compute for those examples (no row mix-ups).
  recs = _read_split(workdir, manifest, "train")
  assert sorted(recs) == sorted(f"shapes-train-0-{i}" for i in range(60))
  first = [shapes.generate(i, "train", 0, (32, 64)) for i in range(8)]
  lo = np.asarray(models.tokenizer.encode(np.stack([e.image[32] for e in first])))
  hi = np.asarray(models.sr_tokenizer.encode(np.stack([e.image[64] for e in first])))
  emb, mask = models.text_encoder.encode([e.caption for e in first])
  emb, lengths = np.asarray(emb), np.asarray(mask).sum(-1)
  for i, e in enumerate(first):
    r = recs[e.id]
    assert r["caption"] == e.caption
    np.testing.assert_array_equal(r["tokens_lo"], lo[i].reshape(-1))
    np.testing.assert_array_equal(r["tokens_hi"], hi[i].reshape(-1))
    assert r["text_len"] == lengths[i] > 1
    np.testing.assert_array_equal(r["text_emb"], emb[i, :lengths[i]])
  assert len({r["tokens_lo"].tobytes() for r in recs.values()}) > 50
  # Progress lines with rate and ETA, then a summary.
  assert "precompute train: [" in log and "examples/s" in log and "ETA" in log
  assert "precompute train: 60 written of 60 seen" in log


def test_resume_after_sigkill_matches_an_uninterrupted_run(reference, models, tmp_path):
  ref_dir, ref_manifest, _ = reference
  workdir = tmp_path / "killed"
  proc = subprocess.Popen(_cmd(workdir, *_flags()), cwd=REPO, env=_env(8),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  first = os.path.join(workdir, "index", "train-00000-00000.json")
  deadline = time.time() + 240
  while not os.path.exists(first) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  out = proc.communicate()[0].decode()
  assert proc.returncode == -signal.SIGKILL, out[-3000:]
  entries = glob.glob(os.path.join(workdir, "index", "train-00000-000*.json"))
  assert 1 <= len(entries) < 4, "the run was not interrupted mid-way"
  assert not os.path.exists(workdir / "manifest.json")
  calls = []
  manifest, _ = _run(workdir, models, calls=calls)
  assert _tree(workdir) == _tree(ref_dir)  # shards, index, manifest, spiece: same bytes
  assert manifest == ref_manifest
  assert sum(calls) == 60 + 16 - 16 * len(entries)  # finished shards were not recomputed


def test_resume_redoes_only_unfinished_shards(reference, models, tmp_path):
  ref_dir, _, _ = reference
  workdir = str(tmp_path / "partial")
  shutil.copytree(ref_dir, workdir)
  for name in ("index/train-00000-00002.json", "index/train-00000-00003.json",
               "index/train-00000.json", "manifest.json"):
    os.remove(os.path.join(workdir, name))
  shard = os.path.join(workdir, "shards", "train-00000-00002.tfrecord")
  with open(shard, "r+b") as f:  # renamed but killed before its index entry: stale bytes
    f.truncate(100)
  open(shard + ".tmp-123", "wb").write(b"partial")  # a killed writer's file
  calls = []
  _run(workdir, models, calls=calls)
  assert _tree(workdir) == _tree(ref_dir)
  assert calls == [8, 8, 8, 4]  # shards 2 and 3 of train only


def test_rerun_recomputes_finished_shards_that_changed_on_disk(reference, models, tmp_path):
  ref_dir, _, _ = reference
  workdir = str(tmp_path / "damaged")
  shutil.copytree(ref_dir, workdir)
  with open(os.path.join(workdir, "shards", "train-00000-00001.tfrecord"), "r+b") as f:
    f.seek(500)  # one bit flipped, same size: only the sha256 can tell
    byte = f.read(1)
    f.seek(500)
    f.write(bytes([byte[0] ^ 1]))
  with open(os.path.join(workdir, "shards", "train-00000-00003.tfrecord"), "r+b") as f:
    f.truncate(1000)  # the size tells
  calls = []
  _, log = _run(workdir, models, calls=calls)
  assert _tree(workdir) == _tree(ref_dir)
  assert calls == [8, 8, 8, 4]  # train shards 1 and 3 only
  redone = [line for line in log.splitlines() if "recomputing" in line]
  assert redone == [
      "precompute train: shards/train-00000-00001.tfrecord does not match the sha256 in its "
      "index entry; recomputing it",
      "precompute train: shards/train-00000-00003.tfrecord has 1000 bytes, its index entry "
      f"{os.path.getsize(os.path.join(ref_dir, 'shards', 'train-00000-00003.tfrecord'))}; "
      "recomputing it"]


def test_two_processes_write_disjoint_complete_outputs(reference, tmp_path):
  ref_dir, ref_manifest, _ = reference
  workdir = tmp_path / "two"
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  # 8 rows per process; no SR tokenizer (one model less to build and compile per process).
  # 33 train records: process 0 gets 17, so its last batch runs while process 1, done, feeds
  # padding rows.
  flags = _flags(**{"precompute.batch_size": 16, "sr_tokenizer.resolution": 0,
                    "data.shapes.num_train": 33,
                    "text_encoder.spiece_model": os.path.join(ref_dir, "spiece.model")})
  procs = [subprocess.Popen(
      _cmd(workdir, *flags, f"--coordinator_address=localhost:{port}", "--num_processes=2",
           f"--process_id={i}", "--cpu_collectives=gloo"),
      cwd=REPO, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
      for i in range(2)]
  outs = [p.communicate(timeout=300)[0].decode() for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  manifest = json.load(open(workdir / "manifest.json"))
  assert manifest["process_count"] == 2
  for split, n in (("train", 33), ("heldout", 16)):
    s = manifest["splits"][split]
    assert s["records"] == s["seen"] == n
    by_process = [
        {ex["id"] for f in s["files"] if f.startswith(f"{split}-{p:05d}-")
         for ex in _read_split(str(workdir), {**manifest, "splits": {split: {"files": [f]}}},
                               split).values()}
        for p in range(2)]
    assert by_process[0] and by_process[1] and not by_process[0] & by_process[1]
    assert by_process[0] | by_process[1] == {f"shapes-{split}-0-{i}" for i in range(n)}
    assert {f.split("-")[1] for f in s["files"]} == {"00000", "00001"}
    ours, ref = _read_split(str(workdir), manifest, split), _read_split(ref_dir, ref_manifest,
                                                                        split)
    same = np.mean([np.array_equal(ours[k]["tokens_lo"], ref[k]["tokens_lo"]) for k in ours])
    assert same > 0.9  # the same model outputs per example (rows not mixed up)
    for k in ours:
      assert ours[k]["text_len"] == ref[k]["text_len"]
      np.testing.assert_allclose(ours[k]["text_emb"].astype(np.float32),
                                 ref[k]["text_emb"].astype(np.float32), rtol=0.02, atol=0.02)


def _png(size, colour=(200, 30, 30)):
  buf = io.BytesIO()
  Image.new("RGB", size, colour).save(buf, "PNG")
  return buf.getvalue()


def test_skipped_records_are_counted_by_reason(models, tmp_path):
  root = tmp_path / "images"
  root.mkdir()
  lines = []
  for i in range(5):
    (root / f"ok{i}.png").write_bytes(_png((48 + 8 * i, 40), (40 * i, 100, 200)))
    lines.append({"file": f"ok{i}.png", "caption": f"a red circle number {i}"})
  (root / "text.png").write_bytes(b"not an image")
  (root / "small.png").write_bytes(_png((20, 20)))
  (root / "nocap.png").write_bytes(_png((40, 40)))
  lines += [{"file": "text.png", "caption": "x"}, {"file": "small.png", "caption": "y"},
            {"file": "nocap.png"}, {"file": "gone.png", "caption": "z"}]
  (root / "captions.jsonl").write_text("\n".join(json.dumps(l) for l in lines))
  config = _config(**{"data.source": "folder", "precompute.splits": ("train",),
                      "precompute.examples_per_shard": 4, "data.min_size": 32})
  config.data.folder.update(dict(root=str(root), manifest="captions.jsonl"))
  config.sr_tokenizer.resolution = 0
  manifest, log = _run(tmp_path / "out", dataclasses.replace(
      models, sr_tokenizer=None, sr_resolution=0), config)
  s = manifest["splits"]["train"]
  assert (s["records"], s["seen"]) == (5, 9)
  assert s["skipped"] == {"missing_caption": 1, "missing_image": 1, "too_small": 1,
                          "undecodable": 1}
  assert s["records_per_file"] == [4, 1, 0]
  assert manifest["spec"]["grid_hi"] == 0
  assert "skipped: missing_caption=1, missing_image=1" in log


def test_the_training_input_reads_precomputed_shards_for_base_and_sr(reference):
  workdir, manifest, _ = reference
  from configs import shapes_base_tiny

  class Stage:
    def __init__(self, config, features):
      self.config, self._features = config, features

    def features(self):
      return self._features

  c = shapes_base_tiny.get_config()
  c.model.update(dict(grid_size=4, text_length=16))
  c.data.update(dict(path=workdir, reader="numpy"))
  c.train.batch_size = 4
  from muse_jax.training.base_stage import BaseStage
  base = Stage(c, BaseStage.features(Stage(c, None)))
  src = input_pipeline.make_token_source(base, "eval", 0, 1)
  recs = _read_split(workdir, manifest, "heldout")
  first = [recs[f"shapes-heldout-0-{i}"] for i in range(4)]
  b = next(src)
  np.testing.assert_array_equal(b["tokens"], [r["tokens_lo"] for r in first])
  feats = dict(base.features())
  feats["tokens_lo"] = feats["tokens"]
  feats["tokens"] = dataclasses.replace(feats["tokens"], shape=(64,))
  sr = Stage(c, feats)
  b = next(input_pipeline.make_token_source(sr, "eval", 0, 1))
  np.testing.assert_array_equal(b["tokens_lo"], [r["tokens_lo"] for r in first])
  np.testing.assert_array_equal(b["tokens"], [r["tokens_hi"] for r in first])
  np.testing.assert_array_equal(b["text_len"], [r["text_len"] for r in first])
