"""Sampling from trained stage workdirs with no config file (muse_jax/sampling/chain.py)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from muse_jax.sampling import loading
from muse_jax.sampling.pipeline import Pipeline
from tests.sampling.test_pipeline import flat, make_tiny_run, spiece  # noqa: F401 (fixture)
from tests.training.helpers import REPO, cli_env


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


def test_workdirs_alone_load_the_same_cascade_as_the_config(chained_run):
  root, config = chained_run
  want = Pipeline.from_config(config, root, rng_impl="rbg")
  got = Pipeline.from_workdirs(os.path.join(root, "base"), sr=os.path.join(root, "sr"),
                               rng_impl="rbg")
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


def test_the_cli_samples_from_workdirs_and_names_a_wrong_one(chained_run, tmp_path):
  root, _ = chained_run
  out = tmp_path / "x.png"
  common = [sys.executable, "-m", "muse_jax.sample", "--prompt=a red cube", f"--out={out}",
            "--steps=2", "--sr_steps=2"]
  ok = subprocess.Popen(common + [f"--base={root}/base", f"--sr={root}/sr"], cwd=REPO,
                        env=cli_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True)
  bad = subprocess.run(common + [f"--base={root}/sr"], cwd=REPO, env=cli_env(1),
                       capture_output=True, text=True, timeout=300)
  stdout, stderr = ok.communicate(timeout=300)
  assert ok.returncode == 0, stderr[-3000:]
  from PIL import Image
  assert Image.open(out).size == (32, 32)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines() == [
      f"error: --base={root}/sr is a 'sr' workdir; give the workdir of a trained base stage"]
