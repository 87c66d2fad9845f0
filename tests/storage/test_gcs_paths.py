"""The path layer against a real GCS JSON-API server on localhost (tests/gcs_emulator.py):
workdir checks, config.json, exports (sharded safetensors read back through a local copy),
metrics.jsonl and TensorBoard on gs://, and that nothing lands in a local './gs:' folder."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.gcs_emulator import BUCKET


@pytest.fixture()
def root(gcs, request):
  return f"gs://{BUCKET}/paths/{request.node.name}"


def test_atomic_write_check_writable_and_config_json(root, tmp_path, monkeypatch):
  import ml_collections

  from muse_jax import paths
  from muse_jax.workdir import access, saved_config
  monkeypatch.chdir(tmp_path)
  access.check_writable(root)
  assert not paths.resolve(root).exists()  # the probe is gone (GCS has no empty folders)
  paths.write_atomic(f"{root}/a.txt", "one")
  paths.write_atomic(f"{root}/a.txt", b"two")
  assert paths.resolve(f"{root}/a.txt").read_text() == "two"
  config = ml_collections.ConfigDict({"stage": "base", "model": {"hidden": 8, "dims": (1, 2)}})
  saved_config.write_config(root, config)
  assert saved_config.load_saved_config(root).model.dims == (1, 2)
  assert str(paths.resolve(root)) == root  # a URL is never made "absolute"
  assert not os.path.exists(tmp_path / "gs:")


def test_check_writable_names_a_missing_bucket(gcs):
  from muse_jax.workdir import access
  with pytest.raises(access.UnwritableWorkdir, match="gs://no-such-bucket/run"):
    access.check_writable("gs://no-such-bucket/run")


def test_export_on_gcs_is_written_read_verified_and_overwritten(root):
  from muse_jax import paths
  from muse_jax.weights.safetensors_io import SafetensorsReader
  from muse_jax.workdir import export_io
  out = f"{root}/export"
  params = {"a": {"kernel": np.arange(12, dtype=np.float32).reshape(3, 4)},
            "b": {"bias": np.ones(5, np.float32), "scale": np.full(7, 2.0, np.float32)}}
  info = export_io.write_export(out, params, {"stage": "base"}, {"step": 3},
                                max_shard_bytes=40)
  assert sorted(info["files"]) == sorted(
      [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
      + ["model.safetensors.index.json", "config.json"])
  assert export_io.is_export(out)
  export_io.verify_files(out)
  reader = SafetensorsReader(out)
  np.testing.assert_array_equal(reader["a.kernel"], params["a"]["kernel"])
  np.testing.assert_array_equal(reader["b.scale"], params["b"]["scale"])
  with pytest.raises(export_io.ExportExists):
    export_io.write_export(out, params, {"stage": "base"}, {"step": 3})
  # Overwrite with one file: the old shards must be gone, not merely outnumbered.
  export_io.write_export(out, params, {"stage": "base"}, {"step": 4}, overwrite=True)
  names = sorted(p.name for p in paths.resolve(out).iterdir())
  assert names == ["config.json", "export.json", "model.safetensors"]
  assert export_io.read_info(out)["step"] == 4
  (paths.resolve(out) / "config.json").write_text("{}")
  with pytest.raises(export_io.WeightsError, match="config.json"):
    export_io.verify_files(out)


def test_metrics_log_truncates_on_resume_and_tensorboard_writes_events(root):
  from muse_jax import paths
  from muse_jax.training.reporting import Reporter
  log = paths.resolve(root) / "metrics.jsonl"
  log.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3))
                 + '{"step": 4, "lo')  # a torn last line
  rep = Reporter(root, total_steps=5, start_step=2, enabled=True, tensorboard=True,
                 stream=open(os.devnull, "w"))
  assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2]
  assert (paths.resolve(root) / "metrics.jsonl.dropped").read_text() == '{"step": 4, "lo\n'
  rep.record(3, {"loss": 0.5})
  rep.scalars(3, {"loss": 0.5})
  rep.close()
  assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2, 3]
  events = list((paths.resolve(root) / "tensorboard").iterdir())
  assert len(events) == 1 and events[0].name.startswith("events.out.tfevents")
  assert events[0].stat().length > 0


def test_evaluation_outputs_on_gcs_resume_and_reference_stats(root):
  from muse_jax import paths
  from muse_jax.evaluation import fid, runner
  out = f"{root}/eval"
  rng = np.random.default_rng(0)
  ev = runner.Evaluation(out=out, captions=["two red circles"] * 6,
                         metrics=(), batch_size=2, chunk_size=2, identity={},
                         grid=2, save_images=True)
  images = lambda idx: rng.integers(0, 256, (len(idx), 16, 16, 3), dtype=np.uint8)
  assert runner.run(ev, images, log=lambda s: None, max_chunks=1) is None  # stopped, saved
  assert runner.load_state(ev)[0] == 2
  acc = runner.run(ev, images, log=lambda s: None)  # resumes at chunk 2 from gs://
  assert acc is not None and runner.load_state(ev)[0] == 6
  names = {p.name for p in (paths.resolve(out) / "images" / "0").iterdir()}
  assert names == {f"{i:06d}.png" for i in range(6)}
  assert paths.resolve(runner.grid_path(out, 0)).is_file()
  report = runner.write_report(out, 0, {"metrics": {}})
  assert report == f"{out}/eval/0.json"
  assert json.loads(paths.resolve(report).read_text()) == {"metrics": {}}
  g = fid.Gaussian(mean=np.arange(3.0), cov=np.eye(3), count=5)
  fid.save_stats(f"{out}/ref.npz", g, {"inception": "x"})
  back = fid.load_stats(f"{out}/ref.npz")
  np.testing.assert_array_equal(back.cov, g.cov)
  assert fid.load_stats_info(f"{out}/ref.npz") == {"inception": "x"}


def test_t5x_checkpoint_and_hf_safetensors_read_from_gcs(root, tmp_path):
  """T5 weights as labs keep them (gs://t5-data/...): a T5X checkpoint with zarr arrays and
  the Hugging Face safetensors of the same weights, both read from the bucket."""
  import fsspec
  from safetensors.numpy import save_file

  from muse_jax.weights.safetensors_io import WeightsError
  from muse_jax.weights.t5_hf import load_hf_params
  from muse_jax.weights.t5x import load_t5x_params
  from tests.weights.test_t5_weights import CFG, hf_tensors, t5x_target, write_t5x
  weights = hf_tensors(CFG)
  chunking = {"token_embedder/embedding": {"chunks": [100, 32]}}
  local = write_t5x(str(tmp_path / "checkpoint_1"), t5x_target(weights, CFG), chunking=chunking)
  save_file(weights, str(tmp_path / "model.safetensors"))
  fs = fsspec.filesystem("gs")
  fs.put(local, f"{root}/checkpoint_1", recursive=True)
  fs.put(str(tmp_path / "model.safetensors"), f"{root}/hf/model.safetensors")
  want = load_t5x_params(local, CFG)
  for got in (load_t5x_params(f"{root}/checkpoint_1", CFG),
              load_hf_params(f"{root}/hf/model.safetensors", CFG)):
    for (pa, a), (pb, b) in zip(jax_leaves(got), jax_leaves(want)):
      assert pa == pb
      np.testing.assert_array_equal(a, b)
  fs.rm(f"{root}/checkpoint_1/target.token_embedder.embedding/1.0")
  with pytest.raises(WeightsError, match="missing"):
    load_t5x_params(f"{root}/checkpoint_1", CFG)


def jax_leaves(tree):
  import jax
  return [(jax.tree_util.keystr(p), np.asarray(v))
          for p, v in jax.tree_util.tree_leaves_with_path(tree)]


def test_tokenizer_images_read_from_a_gcs_folder(root):
  """The vqgan stage's `folder` source lists and reads its images on gs://."""
  import io

  from etils import epath
  from PIL import Image

  from muse_jax.data.images import ImageSource
  for i, name in enumerate(["a.png", "sub/b.jpg"]):
    buf = io.BytesIO()
    Image.new("RGB", (30, 20), (100 * i, 50, 50)).save(buf, "PNG" if i == 0 else "JPEG")
    epath.Path(f"{root}/{name}").parent.mkdir(parents=True, exist_ok=True)
    epath.Path(f"{root}/{name}").write_bytes(buf.getvalue())
  src = ImageSource("folder", 16, seed=0, split="train", global_batch=2, root=root)
  assert src.files == ["a.png", "sub/b.jpg"]
  images = next(src)["images"]
  assert images.shape == (2, 16, 16, 3)
  assert sorted(int(im[..., 0].mean()) // 50 for im in images) == [0, 2]


def test_gs_goes_to_gcsfs_whichever_module_reads_a_file_first(root, tmp_path):
  """epath picks its gs:// backend at its first path operation, local ones included; with
  TensorFlow installed and EPATH_USE_TF unset, a local read through the data sources (which use
  epath directly) must not send later gs:// reads to TF's client, which cannot reach the
  emulator. A fresh process, so that nothing has picked the backend yet."""
  import subprocess
  import sys

  from muse_jax import paths
  from tests.training.helpers import REPO, cli_env
  paths.write_atomic(f"{root}/obj.txt", "remote")
  (tmp_path / "local.txt").write_text("local")
  env = cli_env()
  env.pop("EPATH_USE_TF", None)
  code = ("import tensorflow\n"  # installed here: epath would otherwise take its GCS client
          "from muse_jax.data.sources import files\n"
          f"assert files.read_bytes({str(tmp_path / 'local.txt')!r}) == b'local'\n"
          f"print(files.read_bytes({root + '/obj.txt'!r}).decode())\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == "remote", proc.stderr[-3000:]
