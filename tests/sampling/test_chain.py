"""Sampling from trained stage workdirs with no config file (muse_jax/sampling/chain.py), and
from the pipeline bundle of those workdirs (muse_jax/sampling/bundle.py): `python -m
muse_jax.export --pipeline=DIR` writes it, `Pipeline.from_bundle` and `python -m muse_jax.sample
--bundle=DIR` load it. The bundle tests share this module's tiny cascade."""
import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

from muse_jax import export
from muse_jax.sampling import bundle, loading
from muse_jax.sampling.pipeline import Pipeline
from muse_jax.weights.safetensors_io import WeightsError
from tests.sampling.test_pipeline import flat, make_tiny_run, spiece  # noqa: F401 (fixture)
from tests.training.helpers import CACHE_EVERY_COMPILE, REPO, cli_env


@pytest.fixture(scope="module")
def chained_run(tmp_path_factory, spiece):  # noqa: F811
  """The tiny random cascade, with base's config.json pointing at a precompute whose manifest
  names the text encoder, its trained sentencepiece model and the tokenizer workdir."""
  root = str(tmp_path_factory.mktemp("chain"))
  config, _ = make_tiny_run(root, spiece)
  pre = os.path.join(root, "precompute")
  os.makedirs(pre)
  shutil.copy(spiece, os.path.join(pre, "spiece.model"))
  text_encoder = config.pipeline.text_encoder.to_dict()
  text_encoder["spiece_model"] = ""  # precompute trained one: PRE/spiece.model
  vq = os.path.join(root, "vq_lo")
  manifest = {"format_version": 1, "config": {"text_encoder": text_encoder},
              "models": {"tokenizer": {"weights": vq}, "sr_tokenizer": {"weights": vq}}}
  with open(os.path.join(pre, "manifest.json"), "w") as f:
    json.dump(manifest, f)
  base = loading.stage_config(config.pipeline.base)
  base.data.update(dict(source="precomputed", path=pre))
  with open(os.path.join(root, "base", "config.json"), "w") as f:
    f.write(base.to_json_best_effort())
  return root, config


@pytest.fixture(scope="module")
def workdirs_pipe(chained_run):
  root, _ = chained_run
  return Pipeline.from_workdirs(os.path.join(root, "base"), sr=os.path.join(root, "sr"),
                                rng_impl="rbg")


def test_workdirs_alone_load_the_same_cascade_as_the_config(chained_run, workdirs_pipe):
  root, config = chained_run
  want = Pipeline.from_config(config, root, rng_impl="rbg")
  got = workdirs_pipe
  for name in ("base", "sr"):
    w, g = getattr(want, name), getattr(got, name)
    assert g.config.model.to_dict() == w.config.model.to_dict(), name
    assert flat(g.params).keys() == flat(w.params).keys()
    for k, v in flat(w.params).items():
      np.testing.assert_array_equal(flat(g.params)[k], v, err_msg=f"{name} {k}")
  for name in ("vq_lo", "vq_hi", "text_encoder"):
    for k, v in flat(getattr(want, name).params).items():
      np.testing.assert_array_equal(flat(getattr(got, name).params)[k], v, err_msg=name)
  ids = ["two red circles", "a blue square"]
  np.testing.assert_array_equal(got.text_encoder.tokenizer(ids).ids,
                                want.text_encoder.tokenizer(ids).ids)


@pytest.fixture(scope="module")
def bundled(chained_run, tmp_path_factory):
  """The chained cascade (base, sr, one tokenizer for both grids) as a bundle written by the
  export CLI."""
  root, _ = chained_run
  out = str(tmp_path_factory.mktemp("bundles") / "cascade")
  proc = subprocess.run([sys.executable, "-m", "muse_jax.export", f"--pipeline={out}",
                         f"--base={root}/base", f"--sr={root}/sr"], cwd=REPO, env=cli_env(1),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "exported the pipeline bundle (base step 1, sr step 1, vq_lo step 1;" in proc.stdout
  return out


def test_the_cli_samples_from_workdirs_and_from_their_bundle_alike(chained_run, bundled,
                                                                   tmp_path):
  """Two sampling processes (workdirs, then bundle) with the same seed: the same pixels. The
  second reads the first's compiled functions from a shared JAX cache (the same programs)."""
  root, _ = chained_run
  env = cli_env(1)
  env.update(CACHE_EVERY_COMPILE)
  common = [sys.executable, "-m", "muse_jax.sample", "--prompt=a red cube", "--steps=2",
            "--sr_steps=2"]

  def sample(name, *args):
    return subprocess.Popen(common + [f"--out={tmp_path}/{name}.png", *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

  first = sample("workdirs", f"--base={root}/base", f"--sr={root}/sr")
  bad = subprocess.run(common + [f"--base={root}/sr"], cwd=REPO, env=cli_env(1),
                       capture_output=True, text=True, timeout=300)
  _, stderr = first.communicate(timeout=300)
  assert first.returncode == 0, stderr[-3000:]
  second = sample("bundle", f"--bundle={bundled}")  # the cache holds the first's programs now
  _, stderr = second.communicate(timeout=300)
  assert second.returncode == 0, stderr[-3000:]
  from PIL import Image
  images = [np.asarray(Image.open(tmp_path / f"{name}.png")) for name in ("workdirs", "bundle")]
  assert images[0].shape == (32, 32, 3)
  np.testing.assert_array_equal(images[1], images[0])
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines() == [
      f"error: --base={root}/sr is a 'sr' workdir; give the workdir of a trained base stage"]


def test_the_bundle_loads_exactly_the_workdirs_cascade(workdirs_pipe, bundled):
  want, got = workdirs_pipe, Pipeline.from_bundle(bundled)
  assert got.config.sampling.to_dict() == want.config.sampling.to_dict()
  assert got.config.seed == want.config.seed
  for name in ("base", "sr", "vq_lo", "vq_hi", "text_encoder"):
    w, g = getattr(want, name), getattr(got, name)
    if name in ("base", "sr"):
      assert (g.step, g.config.model.to_dict()) == (w.step, w.config.model.to_dict())
    assert flat(g.params).keys() == flat(w.params).keys(), name
    for k, v in flat(w.params).items():
      assert flat(g.params)[k].dtype == v.dtype, (name, k)
      np.testing.assert_array_equal(flat(g.params)[k], v, err_msg=f"{name} {k}")
  ids = ["two red circles", "a blue square"]
  np.testing.assert_array_equal(got.text_encoder.tokenizer(ids).ids,
                                want.text_encoder.tokenizer(ids).ids)


def _modes(directory):
  return {os.path.relpath(os.path.join(d, n), directory):
          stat.S_IMODE(os.stat(os.path.join(d, n)).st_mode)
          for d, dirs, files in os.walk(directory) for n in dirs + files}


def test_bundle_layout_modes_and_manifest(bundled):
  umask = os.umask(0)
  os.umask(umask)
  modes = _modes(bundled)
  assert sorted(modes) == [
      "base", "base/config.json", "base/export.json", "base/model.safetensors", "manifest.json",
      "pipeline.json", "spiece.model", "sr", "sr/config.json", "sr/export.json",
      "sr/model.safetensors", "vq_lo", "vq_lo/config.json", "vq_lo/export.json",
      "vq_lo/model.safetensors"]
  for name, mode in modes.items():  # not the 0600 of a temporary file
    want = 0o755 if os.path.isdir(os.path.join(bundled, name)) else 0o644
    assert mode == want & ~umask, (name, oct(mode))
  manifest = bundle.read_manifest(bundled)
  assert set(manifest["files"]) == set(modes) - {"base", "sr", "vq_lo", "manifest.json"}
  stages = manifest["stages"]
  assert (stages["base"]["step"], stages["sr"]["params"]) == (1, "ema")
  assert stages["vq_hi"] == {"dir": "vq_lo", "same_as": "vq_lo"}
  assert stages["text_encoder"]["weights"] == "reference"
  assert stages["base"]["tensors"]["head.kernel"] == [32, 64]
  assert {"muse_jax_version", "git_commit"} <= set(manifest)
  assert not [n for n in os.listdir(os.path.dirname(bundled)) if ".tmp-" in n]


def test_text_encoder_weights_and_every_damage_is_named(chained_run, workdirs_pipe, bundled,
                                                        tmp_path):
  from muse_jax.encoders.text_encoder import TextEncoder
  root, _ = chained_run
  own = str(tmp_path / "own")  # base only, with the text encoder's parameters
  manifest = export.export_pipeline(own, f"{root}/base", text_encoder="weights",
                                    dtype="bfloat16")
  assert manifest["stages"]["text_encoder"]["weights"] == "included"
  assert "sr" not in manifest["stages"] and os.path.isdir(f"{own}/text_encoder")
  config, params, _ = bundle.read_bundle(own)
  assert config.pipeline.sr.config == ""
  included = TextEncoder.from_config(config.pipeline.text_encoder, params=params)
  for k, v in flat(workdirs_pipe.text_encoder.params).items():
    np.testing.assert_array_equal(flat(included.params)[k], v, err_msg=k)

  def damaged(name):
    copy = str(tmp_path / name)
    shutil.copytree(bundled, copy)
    return copy

  bad = damaged("flipped")
  with open(f"{bad}/sr/model.safetensors", "r+b") as f:
    f.seek(-3, 2)
    f.write(b"\x00\x01\x02")
  with pytest.raises(WeightsError, match=r"sr/model.safetensors does not match its sha256"):
    Pipeline.from_bundle(bad)
  bad = damaged("missing")
  os.remove(f"{bad}/spiece.model")
  with pytest.raises(WeightsError, match=r"spiece.model is missing"):
    bundle.read_bundle(bad)
  bad = damaged("keys")
  with open(f"{bad}/manifest.json") as f:
    m = json.load(f)
  m["stages"]["base"]["tensors"]["head.kernel"] = [32, 65]
  with open(f"{bad}/manifest.json", "w") as f:
    json.dump(m, f)
  with pytest.raises(WeightsError, match=r"base does not match .*head.kernel: file \(32, 64\) "
                     r"vs model \(32, 65\)"):
    bundle.read_bundle(bad)
  os.remove(f"{bad}/manifest.json")  # an unfinished write: no manifest, no bundle
  with pytest.raises(FileNotFoundError, match="not a complete pipeline bundle"):
    Pipeline.from_bundle(bad)
  with pytest.raises(FileNotFoundError, match=f"--sr={tmp_path}/nope: no such directory"):
    export.export_pipeline(str(tmp_path / "x"), f"{root}/base", sr=f"{tmp_path}/nope")
  with pytest.raises(export.ExportError, match="--pipeline=.* is or contains --base"):
    export.export_pipeline(root, f"{root}/base")


def test_bundle_on_gcs_is_written_verified_and_loaded(gcs, chained_run, bundled):
  from muse_jax import paths
  from tests.gcs_emulator import BUCKET
  root, _ = chained_run
  url = f"gs://{BUCKET}/bundles/cascade"
  manifest = export.export_pipeline(url, f"{root}/base", sr=f"{root}/sr")
  assert manifest["files"] == bundle.read_manifest(bundled)["files"]  # the same bytes
  config, _, _ = bundle.read_bundle(url)
  assert config.pipeline.base.workdir == f"{url}/base"
  got = loading.load_transformer(config.pipeline.sr, "sr")
  want = loading.load_transformer(bundle.read_bundle(bundled)[0].pipeline.sr, "sr")
  for k, v in flat(want.params).items():
    np.testing.assert_array_equal(flat(got.params)[k], v, err_msg=k)
  with pytest.raises(FileExistsError, match="--overwrite"):
    export.export_pipeline(url, f"{root}/base")
  (paths.resolve(url) / "vq_lo" / "config.json").write_text("{}")
  with pytest.raises(WeightsError, match="vq_lo/config.json does not match"):
    bundle.read_bundle(url)


@pytest.mark.parametrize("flag", ["base", "sr", "vq_lo", "vq_hi", "bundle"])
def test_sample_names_a_flag_whose_path_does_not_exist(flag, chained_run, tmp_path):
  """Each process stops before JAX is imported."""
  root, _ = chained_run
  args = [f"--{flag}={tmp_path}/nope", "--prompt=x"]
  if flag not in ("base", "bundle"):
    args.append(f"--base={root}/base")
  proc = subprocess.run([sys.executable, "-m", "muse_jax.sample", *args], cwd=REPO,
                        env=cli_env(1), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      f"error: --{flag}={tmp_path}/nope: no such directory"]


def test_a_diffusers_tokenizer_is_copied_and_loads_the_same(chained_run, tmp_path):
  from safetensors.numpy import save_file

  from muse_jax.weights import diffusers_vq
  from tests.weights.test_diffusers_vq import DIFFUSERS_CFG
  root, _ = chained_run
  vq = tmp_path / "vq"  # a VQModel directory with random weights (64 codes, as the base's)
  vq.mkdir()
  (vq / "config.json").write_text(json.dumps(DIFFUSERS_CFG))
  cfg = diffusers_vq.vqgan_config_from_diffusers(DIFFUSERS_CFG)
  rng, tree = np.random.default_rng(0), {}
  for parts, shape in diffusers_vq.expected_keys(cfg).values():
    node = tree
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = rng.standard_normal(shape).astype(np.float32)
  save_file(diffusers_vq.to_diffusers_state(tree),
            str(vq / "diffusion_pytorch_model.safetensors"))
  out = str(tmp_path / "b")
  manifest = export.export_pipeline(out, f"{root}/base", vq_lo=str(vq))
  assert manifest["stages"]["vq_lo"]["kind"] == "diffusers_vq"
  assert sorted(os.listdir(f"{out}/vq_lo")) == ["config.json",
                                                "diffusion_pytorch_model.safetensors"]
  config, _, _ = bundle.read_bundle(out)
  got = loading.load_vq(config.pipeline.vq_lo, "vq_lo", None, loading.single_device_mesh())
  want = diffusers_vq.load_diffusers_vq(str(vq))[1]
  for k, v in flat(want).items():
    np.testing.assert_array_equal(flat(got.params)[k], v, err_msg=k)
