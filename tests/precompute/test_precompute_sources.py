"""Precompute from each raw source through its shipped config (configs/precompute_*.py), with
tiny random models: records, skipped records listed in skipped.jsonl, exact resume."""
import dataclasses
import glob
import importlib
import io
import json
import os
import shutil

import pytest

from muse_jax.data import manifest as manifest_lib, records
from muse_jax.precompute import run as precompute
from tests.data import source_files
from tests.xla_env import xla_flags

# Tiny data at 32 px, batches of 8 (the 8 fake devices), shards of 4 raw records.
TINY = {"tokenizer.resolution": 32, "sr_tokenizer.resolution": 0, "data.min_size": 16,
        "data.num_workers": 2, "precompute.batch_size": 8, "precompute.examples_per_shard": 4,
        "precompute.log_every": 1}


def _set(config, overrides):
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.fixture(scope="module")
def tiny(precompute_models):
  """The shared tiny models without the SR tokenizer, and their spiece.model."""
  models, spiece = precompute_models
  return dataclasses.replace(models, sr_tokenizer=None, sr_resolution=0), spiece


def _config(name, tiny, **data):
  """configs/precompute_<name>.py at tiny sizes, its data section from `data`."""
  c = importlib.import_module(f"configs.precompute_{name}").get_config()
  return _set(c, {**TINY, "text_encoder.spiece_model": tiny[1],
                  **{f"data.{k.replace('__', '.')}": v for k, v in data.items()}})


def _run(config, workdir, tiny, calls=None):
  def models_fn(config, mesh, spiece):
    m = dataclasses.replace(tiny[0])
    if calls is not None:
      def run(*args):
        calls.append(len([c for c in args[2] if c]))
        return precompute.Models.run(m, *args)
      m.run = run
    return m
  out = io.StringIO()
  manifest = precompute.run_precompute(config, str(workdir), stream=out, models_fn=models_fn)
  return manifest, out.getvalue()


def _ids(workdir, manifest, split="train"):
  spec = records.RecordSpec.from_json(manifest["spec"])
  return [records.decode_example(raw, spec)["id"]
          for f in manifest["splits"][split]["files"]
          for raw in records.read_tfrecord(os.path.join(workdir, "shards", f))]


def _skipped(workdir):
  with open(os.path.join(workdir, manifest_lib.SKIPPED)) as f:
    return [json.loads(line) for line in f]


def _tree(workdir):
  return {os.path.relpath(p, workdir): open(p, "rb").read()
          for p in sorted(glob.glob(os.path.join(workdir, "**", "*"), recursive=True))
          if os.path.isfile(p)}


@pytest.fixture(scope="module")
def webdataset(tiny, tmp_path_factory):
  data = tmp_path_factory.mktemp("wds")
  kept, skipped = source_files.write_webdataset(str(data))
  config = _config("webdataset", tiny, webdataset__shards=f"{data}/{{000000..000002}}.tar")
  workdir = tmp_path_factory.mktemp("wds_out")
  manifest, log = _run(config, workdir, tiny)
  return config, str(workdir), manifest, log, kept, skipped


def test_webdataset_shards_precompute_with_skipped_keys_listed(webdataset):
  _, workdir, manifest, log, kept, skipped = webdataset
  s = manifest["splits"]["train"]
  assert (s["records"], s["seen"]) == (len(kept), len(kept) + len(skipped))
  assert s["skipped"] == {"corrupt_record": 3, "missing_caption": 1, "missing_image": 1,
                          "undecodable": 1}
  assert s["records_per_file"] == [2, 2, 1]  # raw records 0-3, 4-7, 8-10
  assert _ids(workdir, manifest) == kept
  assert manifest["skipped_list"] == {"file": "skipped.jsonl", "records": 6, "unlisted": 0}
  listed = _skipped(workdir)
  assert {r["id"]: r["reason"] for r in listed} == skipped
  assert {r["split"] for r in listed} == {"train"}
  assert f"skipped records: {workdir}/skipped.jsonl (6 listed)" in log


def test_webdataset_precompute_resumes_to_the_same_bytes(webdataset, tiny, tmp_path):
  config, ref_dir, ref_manifest, _, _, _ = webdataset
  workdir = str(tmp_path / "resumed")
  shutil.copytree(ref_dir, workdir)
  # As if killed after shard 0: later entries, the summary and the outputs of the end gone.
  for name in ("index/train-00000-00001.json", "index/train-00000-00002.json",
               "index/train-00000.json", "manifest.json", "skipped.jsonl"):
    os.remove(os.path.join(workdir, name))
  calls = []
  manifest, _ = _run(config, workdir, tiny, calls=calls)
  assert _tree(workdir) == _tree(ref_dir)  # shards, index, manifest, skipped.jsonl
  assert manifest == ref_manifest
  assert calls == [2, 1]  # shards 1 and 2 only


def test_skips_of_shards_finished_by_an_older_version_are_counted_as_unlisted(webdataset, tiny,
                                                                              tmp_path):
  config, ref_dir, _, _, _, _ = webdataset
  workdir = str(tmp_path / "old")
  shutil.copytree(ref_dir, workdir)
  summary = os.path.join(workdir, "index", "train-00000.json")
  entries = json.load(open(summary))
  del entries["shards"][0]["skipped_ids"]  # shard 0 (2 skips) from before ids were kept
  manifest_lib.write_json(summary, entries)
  calls = []
  manifest, log = _run(config, workdir, tiny, calls=calls)
  assert calls == []
  assert manifest["skipped_list"] == {"file": "skipped.jsonl", "records": 4, "unlisted": 2}
  assert [r["id"] for r in _skipped(workdir)] == [
      "000001.tar/000010000", "000001.tar/000010001", "000001.tar/000010003", "000002.tar"]
  assert "(4 listed, 2 skipped by an older version unlisted)" in log


def test_parquet_with_bytes_and_paths_precomputes(tiny, tmp_path):
  kept, skipped = source_files.write_parquet(str(tmp_path / "data"))
  config = _config("parquet", tiny, parquet__files=str(tmp_path / "data"))
  manifest, _ = _run(config, tmp_path / "out", tiny)
  files = ("bytes.parquet", "paths.parquet")
  assert _ids(str(tmp_path / "out"), manifest) == [f"{f}:{i}" for f in files for i in range(3)]
  assert _skipped(str(tmp_path / "out")) == [
      {"split": "train", "id": f"{f}:{row}", "reason": skipped[f.split(".")[0]][f"row{row}"]}
      for f in files for row in (3, 4)]


@pytest.mark.parametrize("name", ["folder", "tfrecord", "tfds"])
def test_the_other_shipped_configs_precompute(name, tiny, tmp_path):
  data = tmp_path / "data"
  data.mkdir()
  if name == "folder":
    for i in range(3):
      (data / f"{i}.png").write_bytes(source_files.image_bytes((80 * i, 10, 10)))
      (data / f"{i}.txt").write_text(f"square {i}")
    (data / "nocaption.png").write_bytes(source_files.image_bytes((1, 1, 1)))
    config = _config(name, tiny, folder__root=str(data))
    want, want_skipped = ["0.png", "1.png", "2.png"], {"nocaption.png": "missing_caption"}
  elif name == "tfrecord":
    want = source_files.write_tfrecords(data)
    config = _config(name, tiny, tfrecord__pattern=str(data / "part-*.tfrecord"),
                     tfrecord__image_key="jpg", tfrecord__caption_key="txt",
                     tfrecord__id_key="key")
    want_skipped = {"f0-noimg": "missing_image", "f1-noimg": "missing_image",
                    "part-0.tfrecord:4": "corrupt_record", "part-1.tfrecord:4": "corrupt_record",
                    "part-2.tfrecord:1": "corrupt_record"}
  else:
    source_files.write_tfds(str(data))
    config = _config(name, tiny, tfds__name="muse_tiny_captions", tfds__data_dir=str(data),
                     tfds__caption_key="meta/caption")
    config.precompute.splits = ("train",)
    want, want_skipped = None, None
  manifest, _ = _run(config, tmp_path / "out", tiny)
  ids = _ids(str(tmp_path / "out"), manifest)
  listed = {r["id"]: r["reason"] for r in _skipped(str(tmp_path / "out"))}
  if name == "tfds":
    assert len(ids) == 6 and list(listed.values()) == ["empty_caption"]
  else:
    assert (ids, listed) == (want, want_skipped)


def test_the_webdataset_config_runs_from_the_command_line(tmp_path):
  """The docstring's command, its models made tiny with --config flags (a subprocess that
  builds its own tiny models: about half a minute on 2 CPU cores)."""
  import subprocess
  import sys
  source_files.write_webdataset(str(tmp_path / "data"))
  tiny_vq = {"block_out_channels": "(16,16,32,32)", "layers_per_block": 1, "latent_channels": 8,
             "codebook_size": 64, "norm_groups": 8, "dtype": "float32"}
  flags = {"data.webdataset.shards": f"{tmp_path}/data/{{000000..000002}}.tar",
           **{f"tokenizer.model.{k}": v for k, v in tiny_vq.items()},
           "text_encoder.size": "tiny", "text_encoder.max_length": 16,
           "text_encoder.dtype": "float32", "text_encoder.param_dtype": "float32",
           "text_encoder.weights_format": "random", "precompute.spiece_vocab_size": 48,
           **{k: v for k, v in TINY.items() if k != "precompute.log_every"}}
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, XLA_FLAGS=xla_flags(8),
             JAX_PLATFORMS="cpu", PYTHONPATH=root)
  out = subprocess.run(
      [sys.executable, "-m", "muse_jax.precompute", "--config=configs/precompute_webdataset.py",
       f"--workdir={tmp_path / 'out'}", *[f"--config.{k}={v}" for k, v in flags.items()]],
      cwd=root, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "precompute train: 5 written of 11 seen" in out.stdout
  assert len(_skipped(str(tmp_path / "out"))) == 6
