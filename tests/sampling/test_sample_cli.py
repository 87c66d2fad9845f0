"""`python -m muse_jax.sample` on tiny random checkpoints (subprocesses, as a user runs it)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.sampling.test_pipeline import make_tiny_run
from tests.training.helpers import REPO, cli_env


@pytest.fixture(scope="module")
def no_tensorflow(tmp_path_factory):
  """A PYTHONPATH entry whose `tensorflow` package fails to import: sampling must not use it."""
  d = tmp_path_factory.mktemp("no_tf")
  (d / "tensorflow").mkdir()
  (d / "tensorflow" / "__init__.py").write_text(
      "raise ImportError('sampling must run without TensorFlow')\n")
  return str(d)


@pytest.fixture(scope="module")
def sample(no_tensorflow):
  def run(*args, devices=1):
    env = cli_env(devices)
    env["PYTHONPATH"] = no_tensorflow + os.pathsep + env["PYTHONPATH"]
    return subprocess.run([sys.executable, "-m", "muse_jax.sample", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  return run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  from tests.encoders.test_text_tokenizer import train_spiece
  spiece = train_spiece(str(tmp_path_factory.mktemp("spiece")))
  root = str(tmp_path_factory.mktemp("run"))
  make_tiny_run(root, spiece)
  return root, ["--config=configs/pipeline_tiny.py", f"--workdir={root}",
                f"--config.pipeline.text_encoder.spiece_model={spiece}",
                f"--config.pipeline.vq_hi.workdir={os.path.join(root, 'vq_lo')}"]


def test_help_documents_the_flags(sample):
  proc = sample("--help")
  assert proc.returncode in (0, 1), proc.stderr  # absl's --help exits with 1
  assert "Sample or edit images" in proc.stdout and "Traceback" not in proc.stderr
  for flag in ("--prompt", "--negative_prompt", "--out", "--edit", "--image", "--mask",
               "--outpaint_pad", "--guidance", "--steps", "--bundle", "--base", "--sr"):
    assert flag in proc.stdout


def test_generates_pngs_of_the_cascade_size(sample, run, tmp_path):
  from PIL import Image
  root, args = run
  out = tmp_path / "cube.png"
  proc = sample(*args, "--prompt", "a red cube", "--negative_prompt", "blurry",
                "--num_images=2", "--steps=3", "--sr_steps=2", f"--out={out}")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  for i in range(2):
    with Image.open(tmp_path / f"cube_{i}.png") as im:
      assert im.size == (32, 32) and im.mode == "RGB"
  assert "generate: wrote" in proc.stdout and "sr step 1" in proc.stdout


def test_outpaint_flags_base_only(sample, run, tmp_path):
  from PIL import Image
  root, args = run
  src = tmp_path / "in.png"
  Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(src)
  out = tmp_path / "wide.png"
  proc = sample(*args, "--config.pipeline.sr.config=", "--prompt", "a red cube",
                "--edit=outpaint", f"--image={src}", "--outpaint_pad=4,4,0,0", f"--out={out}")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  with Image.open(out) as im:
    assert im.size == (16, 16)
  assert "outpaint: wrote" in proc.stdout


def test_missing_checkpoint_and_bad_flags_are_one_line_errors(sample, run, tmp_path):
  _, args = run
  empty = tmp_path / "empty"
  proc = sample(*args[:1], f"--workdir={empty}", "--prompt", "x", f"--out={tmp_path}/x.png")
  assert proc.returncode == 4, proc.stderr
  assert (f"error: no checkpoint in {empty}/base/checkpoints; train the base stage first with "
          f"python -m muse_jax.train --config=configs/tiny.py --workdir={empty}/base"
          in proc.stderr)
  assert "Traceback" not in proc.stderr
  proc = sample(*args, "--prompt", "x", "--edit=inpaint", f"--image={tmp_path}/nope.png",
                "--mask=m.png")
  assert proc.returncode == 2 and "--image=" in proc.stderr and "no such file" in proc.stderr
