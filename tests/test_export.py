"""`muse_jax.export`: portable safetensors exports of trained stages, and loading them back."""
import copy
import json
import os
import stat
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from muse_jax import export
from muse_jax.sampling import loading, pipeline as pl
from muse_jax.training.registry import stage_model
from muse_jax.weights.safetensors_io import SafetensorsReader, WeightsError
from muse_jax.workdir import export_io
from muse_jax.workdir.checkpoints import MissingCheckpoint
from tests.sampling.test_pipeline import (make_tiny_run, random_params, save_random_stage,
                                          spiece)  # noqa: F401 (spiece: fixture)
from tests.training.helpers import REPO, cli_env, flat


@pytest.fixture(scope="module")
def run(tmp_path_factory, spiece):  # noqa: F811
  """The tiny cascade of test_pipeline; base/ gets a step-2 checkpoint with an EMA and the
  trainer's config.json. Returns (root, pipeline config, base config, raw base params)."""
  root = str(tmp_path_factory.mktemp("run"))
  config, _ = make_tiny_run(root, spiece)
  base_cfg = loading.stage_config(config.pipeline.base)
  save_random_stage(base_cfg, os.path.join(root, "base"), 0, step=2, ema=True)
  return root, config, base_cfg, random_params(base_cfg, 0)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
  """The base stage exported with the defaults (newest step, EMA, float32)."""
  root = run[0]
  out = str(tmp_path_factory.mktemp("exports") / "base")
  info = export.export_stage(os.path.join(root, "base"), out)
  return out, info


def _files(directory):
  return sorted(os.listdir(directory))


def test_export_holds_the_ema_params_exactly_and_the_same_logits(run, exported):
  _, _, base_cfg, raw = run
  out, info = exported
  ema = jax.tree.map(lambda p: p * 0.5, raw)  # what save_random_stage stores as the EMA
  assert _files(out) == ["config.json", "export.json", "model.safetensors"]
  assert {k: info[k] for k in ("stage", "step", "params", "dtype")} == {
      "stage": "base", "step": 2, "params": "ema", "dtype": "float32"}
  assert info["parameter_count"] == sum(x.size for x in jax.tree.leaves(raw))
  assert set(info["files"]) == {"model.safetensors", "config.json"}
  assert {"muse_jax_version", "git_commit", "source_workdir"} <= set(info)
  with open(os.path.join(out, "export.json")) as f:
    assert json.load(f) == info
  umask = os.umask(0)
  os.umask(umask)
  for name in [""] + _files(out):  # ordinary modes, not a temporary file's 0600
    want = (0o755 if name == "" else 0o644) & ~umask
    assert stat.S_IMODE(os.stat(os.path.join(out, name)).st_mode) == want, name
  export_io.verify_files(out)
  # Flat, framework-neutral keys.
  assert "stack.blocks.self_attn.qkv.kernel" in SafetensorsReader(out)
  config, model_def, params = loading.load_exported(out)
  assert config.stage == "base" and config.model.to_dict() == base_cfg.model.to_dict()
  want, got = flat(ema), flat(params)
  assert want.keys() == got.keys()
  for k in want:
    assert got[k].dtype == np.float32
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  # The rebuilt model computes exactly what the original does.
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, 65, (2, 16)), jnp.int32)
  text = jnp.asarray(rng.standard_normal((2, 8, 32)), jnp.float32)
  length = jnp.array([5, 0], jnp.int32)
  original = stage_model(base_cfg).bind(jax.tree.map(jnp.asarray, ema))
  np.testing.assert_array_equal(model_def.bind(params)(tokens, text, length),
                                original(tokens, text, length))


def test_raw_bfloat16_and_step_choice(run, tmp_path):
  root, _, _, raw = run
  workdir = os.path.join(root, "base")
  info = export.export_stage(workdir, str(tmp_path / "bf16"), dtype="bfloat16", params="raw")
  assert (info["params"], info["dtype"], info["step"]) == ("raw", "bfloat16", 2)
  reader = SafetensorsReader(str(tmp_path / "bf16"))
  assert reader["head.kernel"].dtype == ml_dtypes.bfloat16
  _, _, params = loading.load_exported(str(tmp_path / "bf16"))
  raw = flat(raw)
  for k, got in flat(params).items():
    want = raw[k]
    assert got.dtype == np.float32  # loaded in the model's param dtype
    np.testing.assert_array_equal(got, want.astype(ml_dtypes.bfloat16).astype(np.float32))
    np.testing.assert_allclose(got, want, rtol=2.0 ** -8, atol=0, err_msg=k)
  # Step 1 has no EMA: auto gives the raw params, ema is a clear error.
  assert export.export_stage(workdir, str(tmp_path / "s1"), step="1")["params"] == "raw"
  with pytest.raises(MissingCheckpoint, match="holds no EMA parameters"):
    export.export_stage(workdir, str(tmp_path / "s1e"), step=1, params="ema")
  with pytest.raises(MissingCheckpoint, match="no checkpoint for step 7"):
    export.export_stage(workdir, str(tmp_path / "s7"), step=7)
  assert not os.path.exists(tmp_path / "s1e") and not os.path.exists(tmp_path / "s7")


def test_unknown_stage_and_missing_config_are_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match="no config.json in"):
    export.export_stage(str(tmp_path), str(tmp_path / "out"))
  with open(tmp_path / "config.json", "w") as f:
    json.dump({"stage": "decoder", "model": {}}, f)
  with pytest.raises(export.ExportError, match="stage='decoder'; export knows vqgan, base, sr"):
    export.export_stage(str(tmp_path), str(tmp_path / "out"))
  with pytest.raises(export.ExportError, match="is or contains --workdir"):
    export.export_stage(str(tmp_path), str(tmp_path.parent), overwrite=True)
  with pytest.raises(export.ExportError, match="--max_shard_bytes='2 parsecs'"):
    export.export_stage(str(tmp_path), str(tmp_path / "out"), max_shard_bytes="2 parsecs")


def test_sharded_export_round_trips(run, exported, tmp_path):
  root = run[0]
  out = str(tmp_path / "sharded")
  info = export.export_stage(os.path.join(root, "base"), out, max_shard_bytes="4KiB")
  shards = [f for f in _files(out) if f.endswith(".safetensors")]
  assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
  with open(os.path.join(out, "model.safetensors.index.json")) as f:
    index = json.load(f)
  sizes = {k: np.asarray(v).nbytes for k, v in SafetensorsReader(exported[0]).items()}
  assert index["metadata"]["total_size"] == sum(sizes.values())
  assert set(index["weight_map"]) == set(sizes) and set(index["weight_map"].values()) == set(
      shards)
  for name in shards:  # every file within the limit unless it holds a single larger tensor
    keys = [k for k, v in index["weight_map"].items() if v == name]
    assert sum(sizes[k] for k in keys) <= 4096 or len(keys) == 1
  assert set(info["files"]) == set(shards) | {"model.safetensors.index.json", "config.json"}
  export_io.verify_files(out)
  _, _, a = loading.load_exported(out)
  _, _, b = loading.load_exported(exported[0])
  for k, v in flat(b).items():
    np.testing.assert_array_equal(flat(a)[k], v, err_msg=k)


def test_pipeline_samples_the_same_tokens_from_exports(run, exported, tmp_path):
  root, config, _, _ = run
  exp = copy.deepcopy(config)
  exp.pipeline.base.workdir = exported[0]
  for name in ("sr", "vq_lo"):
    export.export_stage(os.path.join(root, name), str(tmp_path / name))
    exp.pipeline[name].workdir = str(tmp_path / name)
  exp.pipeline.vq_hi.workdir = str(tmp_path / "vq_lo")
  # SR from its export: the same (EMA) params and config as from its workdir.
  sr_a = loading.load_transformer(config.pipeline.sr, "sr", root)
  sr_b = loading.load_transformer(exp.pipeline.sr, "sr")
  assert (sr_b.step, sr_b.config.model.to_dict()) == (sr_a.step, sr_a.config.model.to_dict())
  for k, v in flat(sr_a.params).items():
    np.testing.assert_array_equal(flat(sr_b.params)[k], v, err_msg=k)
  # Base + VQ from exports sample exactly what they do from workdirs (base only: one compile
  # per pipeline).
  config = copy.deepcopy(config)
  for c in (config, exp):
    c.pipeline.sr.config = ""
  from_workdirs = pl.Pipeline.from_config(config, root, rng_impl="rbg")
  from_exports = pl.Pipeline.from_config(exp, rng_impl="rbg")
  assert from_exports.base.step == 2
  a = from_workdirs.generate(["a red cube"], seed=3)
  b = from_exports.generate(["a red cube"], seed=3)
  np.testing.assert_array_equal(b.tokens_lo, a.tokens_lo)
  np.testing.assert_array_equal(b.images, a.images)
  # An export of the wrong stage, or of another step, is named.
  bad = copy.deepcopy(exp)
  bad.pipeline.base.workdir = str(tmp_path / "sr")
  with pytest.raises(ValueError, match="is an export of a 'sr' stage; pipeline.base needs"):
    loading.load_transformer(bad.pipeline.base, "base")
  bad.pipeline.base.workdir, bad.pipeline.base.step = exported[0], 1
  with pytest.raises(ValueError, match="pipeline.base.step=1 but .* export of step 2"):
    loading.load_transformer(bad.pipeline.base, "base")


def test_refuses_to_overwrite_unless_asked(run, tmp_path):
  workdir = os.path.join(run[0], "base")
  out = tmp_path / "x"
  out.mkdir()  # an empty directory may be exported into
  export.export_stage(workdir, str(out))
  before = export_io.read_info(str(out))
  with pytest.raises(export_io.ExportExists, match="--overwrite"):
    export.export_stage(workdir, str(out), dtype="bfloat16")
  assert export_io.read_info(str(out)) == before
  export.export_stage(workdir, str(out), dtype="bfloat16", overwrite=True)
  assert export_io.read_info(str(out))["dtype"] == "bfloat16"
  export_io.verify_files(str(out))
  assert _files(tmp_path) == ["x"]  # no .tmp-<pid> or .old-<pid> left behind


def test_mismatching_export_names_every_key(exported, tmp_path):
  from safetensors.numpy import load_file, save_file
  out = str(tmp_path / "bad")
  os.makedirs(out)
  for name in ("config.json", "export.json"):
    with open(os.path.join(exported[0], name)) as src, open(os.path.join(out, name), "w") as f:
      f.write(src.read())
  tensors = load_file(os.path.join(exported[0], "model.safetensors"))
  del tensors["stack.blocks.mlp.wi.kernel"]
  tensors["head.bias"] = np.zeros((65,), np.float32)
  tensors["extra.weight"] = np.zeros((2,), np.float32)
  save_file(tensors, os.path.join(out, "model.safetensors"))
  with pytest.raises(WeightsError) as e:
    loading.load_exported(out)
  msg = str(e.value)
  for part in ("1 missing: stack.blocks.mlp.wi.kernel", "1 unexpected: extra.weight",
               "head.bias: file (65,) vs model (64,)"):
    assert part in msg, msg
  with pytest.raises(WeightsError, match="changed files model.safetensors"):
    export_io.verify_files(out)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "muse_jax.export", *args], cwd=REPO,
                        env=cli_env(1), capture_output=True, text=True, timeout=300)


def test_cli_exports_and_fails_with_status_2(run, tmp_path):
  proc = _cli("--help")
  assert "Export a trained stage" in proc.stdout and "Traceback" not in proc.stderr
  for flag in ("--workdir", "--out", "--step", "--dtype", "--params", "--max_shard_bytes",
               "--overwrite"):
    assert flag in proc.stdout
  out = tmp_path / "cli"
  proc = _cli(f"--workdir={run[0]}/base", f"--out={out}", "--dtype=bfloat16",
              "--max_shard_bytes=2KB")
  assert proc.returncode == 0, proc.stderr
  assert "exported base step 2 (ema params, bfloat16, " in proc.stdout
  assert str(out) in proc.stdout
  assert os.path.isfile(out / "model.safetensors.index.json")
  for args, message in (
      ([f"--workdir={tmp_path}/nope", f"--out={tmp_path}/o"], "no such directory"),
      ([f"--workdir={run[0]}/base", f"--out={tmp_path}/o", "--step=x"], "--step='x'"),
      ([f"--workdir={run[0]}/base", f"--out={out}"], "already exists and is not empty")):
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
