"""A whole run with every path on gs:// (a GCS emulator on localhost, tests/gcs_emulator.py),
through the CLIs as a user runs them: train, SIGTERM (a preemption: checkpoint, exit 143),
resume, export, and sample with the exported base and a sentencepiece model read from gs://.

One test, because each step needs the previous one's output. It takes 1-3 minutes (five
CLI processes and the tiny model's compiles) and is the only check that Orbax's TensorStore
writes, tensorboardX's writer and the CLIs' own files all reach the bucket."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.gcs_emulator import BUCKET
from tests.training.helpers import REPO, cli_env

ROOT = f"gs://{BUCKET}/run"
BASE = ["--config.model.text_dim=32", "--config.checkpoint.every_steps=2",
        "--config.train.log_every=1", "--config.train.eval_every=0"]


def _cli(module, *args):
  return [sys.executable, "-m", f"muse_jax.{module}", *args]


def _finished(step):
  from muse_jax import paths
  return (paths.resolve(f"{ROOT}/base/checkpoints/{step}") / "commit_success.txt").exists()


def test_train_preempt_resume_export_sample_all_on_gcs(gcs, tmp_path, tmp_path_factory):
  from muse_jax import paths
  env = cli_env(devices=1)
  run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  config = os.path.join(REPO, "configs")
  train = _cli("train", f"--config={config}/tiny.py", f"--workdir={ROOT}/base", *BASE)

  proc = subprocess.Popen(train + ["--config.train.num_steps=1000"], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while not _finished(2):  # a preemption notice once checkpoint 2 is committed
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, out + err
  preempted = max(int(p.name) for p in paths.resolve(f"{ROOT}/base/checkpoints").iterdir()
                  if p.name.isdigit())
  assert _finished(preempted)

  done = subprocess.run(train + [f"--config.train.num_steps={preempted + 2}"], **run)
  assert done.returncode == 0, done.stdout + done.stderr
  assert f"Resuming from step {preempted} (checkpoint in {ROOT}/base/checkpoints)" in done.stdout
  log = (paths.resolve(f"{ROOT}/base") / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["step"] for x in log] == list(range(1, preempted + 3))
  assert json.loads((paths.resolve(f"{ROOT}/base") / "config.json").read_text())["stage"] == "base"
  assert any(p.name.startswith("events.out.tfevents")
             for p in (paths.resolve(f"{ROOT}/base") / "tensorboard").iterdir())

  export = subprocess.run(_cli("export", f"--workdir={ROOT}/base", f"--out={ROOT}/export"), **run)
  assert export.returncode == 0, export.stdout + export.stderr
  assert f"to {ROOT}/export" in export.stdout
  info = json.loads((paths.resolve(f"{ROOT}/export") / "export.json").read_text())
  assert info["step"] == preempted + 2 and info["source_workdir"] == f"{ROOT}/base"

  # SR and the tokenizer: random checkpoints made locally, then uploaded with the tokenizer.
  from tests.encoders.test_text_tokenizer import train_spiece
  from tests.sampling.test_pipeline import make_tiny_run
  scratch = tmp_path_factory.mktemp("scratch")  # tmp_path, the CLIs' cwd, must stay empty
  local = scratch / "cascade"
  spiece = train_spiece(str(scratch))
  make_tiny_run(str(local), spiece)
  import fsspec
  fs = fsspec.filesystem("gs")
  fs.put(str(local), f"{ROOT}/cascade", recursive=True)
  fs.put(spiece, f"{ROOT}/spiece.model")
  subprocess.run(["rm", "-rf", str(scratch)], check=True)

  sample = subprocess.run(_cli(
      "sample", f"--config={config}/pipeline_tiny.py", f"--workdir={ROOT}/cascade",
      f"--config.pipeline.base.workdir={ROOT}/export",
      f"--config.pipeline.vq_hi.workdir={ROOT}/cascade/vq_lo",
      f"--config.pipeline.text_encoder.spiece_model={ROOT}/spiece.model",
      "--prompt=a red cube", f"--out={ROOT}/out.png"), **{**run, "cwd": REPO})
  assert sample.returncode == 0, sample.stdout + sample.stderr
  from PIL import Image
  import io
  image = Image.open(io.BytesIO(paths.resolve(f"{ROOT}/out.png").read_bytes()))
  assert image.size == (32, 32)
  # Nothing written locally (no './gs:' folders).
  assert os.listdir(tmp_path) == [] and not os.path.exists(os.path.join(REPO, "gs:"))
