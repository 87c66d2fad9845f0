"""python -m muse_jax.evaluate end to end: the tiny random cascade (configs/pipeline_tiny.py, 32 px
samples) scored with FID (random Inception-v3 weights in a torchvision-layout file, at its 75 px
minimum input), CLIP score (muse_jax.models.clip's tiny config in a Hugging Face layout) and
compositional accuracy on shapes captions; resuming after a SIGKILL; several devices and
processes; and the bad inputs that must fail at once with one line and exit status 2.

The `runs` fixture starts two evaluations of the same captions at once: A runs through on one
device; B runs as two processes of 4 CPU devices each (over gloo, in batches of 8), is killed
with SIGKILL as soon as it reports its first chunk, then rerun to the end by two processes.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from muse_jax.data.shapes import dataset as shapes
from muse_jax.evaluation import compositional, inputs, runner, scorers
from muse_jax.evaluation import fid as F
from tests.evaluation.helpers import shapes_captions, write_inception, write_tiny_clip
from tests.sampling.test_pipeline import make_tiny_run, spiece  # noqa: F401 (fixture)
from tests.training.helpers import CACHE_EVERY_COMPILE, REPO, cli_env
from tests.training.test_multiprocess_stops import free_port

N, BATCH, CHUNK = 10, 4, 4   # three chunks: 4, 4 and 2 images (a padded last batch)
BATCH_B = 8                  # B: two chunks, 8 and 2 images, over 2 processes x 4 devices


@pytest.fixture(scope="module")
def files(tmp_path_factory, spiece):  # noqa: F811
  root = tmp_path_factory.mktemp("evaluate")
  make_tiny_run(str(root / "run"), spiece)
  captions = shapes_captions(N)
  # Blank lines are skipped: caption i is the i-th non-blank line.
  (root / "captions.txt").write_text("\n".join(captions[:3]) + "\n\n  \n"
                                     + "\n".join(captions[3:]) + "\n")
  ref = root / "ref"
  ref.mkdir()
  for i, ex in enumerate(shapes.ShapesDataset("train", 12, 5, 32)):
    Image.fromarray(ex.image).save(ref / f"r{i:02d}.png")
  return dict(root=root, run=str(root / "run"), spiece=spiece, captions=captions,
              captions_file=str(root / "captions.txt"), ref=str(ref),
              inception=write_inception(str(root / "inception.safetensors")),
              clip=write_tiny_clip(str(root / "clip")))


def evaluate_cmd(f, out, *extra, batch=BATCH):
  return [sys.executable, "-m", "muse_jax.evaluate", "--config=configs/pipeline_tiny.py",
          f"--workdir={f['run']}", f"--config.pipeline.text_encoder.spiece_model={f['spiece']}",
          f"--config.pipeline.vq_hi.workdir={f['run']}/vq_lo", f"--captions={f['captions_file']}",
          "--metrics=fid,clip,compositional", f"--reference_images={f['ref']}",
          f"--inception_weights={f['inception']}", "--inception_size=75",
          f"--clip_weights={f['clip']}", f"--batch_size={batch}", f"--chunk_size={batch}",
          f"--out={out}", *extra]


def start_two_processes(f, out, log):
  """B's two processes (4 CPU devices each, gloo); process 1's output goes to `log`. The
  resumed processes read what the killed ones compiled from a persistent compilation cache."""
  port = free_port()
  env = cli_env(4)
  env.update(CACHE_EVERY_COMPILE)
  procs = []
  for i in range(2):
    cmd = evaluate_cmd(f, out, f"--coordinator_address=localhost:{port}", "--num_processes=2",
                       f"--process_id={i}", "--cpu_collectives=gloo", batch=BATCH_B)
    sink = subprocess.PIPE if i == 0 else open(log, "a")
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink,
                                  stderr=subprocess.STDOUT, text=True))
  return procs


@pytest.fixture(scope="module")
def runs(files):
  root = files["root"]
  out_a, out_b, log = str(root / "a"), str(root / "b"), str(root / "b1.log")
  a = subprocess.Popen(evaluate_cmd(files, out_a, "--save_images"), cwd=REPO, env=cli_env(1),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  b = start_two_processes(files, out_b, log)
  killed_after = []
  for line in b[0].stdout:
    killed_after.append(line)
    if line.startswith("chunk 1/2"):
      for p in b:
        p.kill()   # SIGKILL: no handler runs, nothing is flushed
      break
  for p in b:
    p.wait(timeout=60)
    assert p.returncode == -9, "".join(killed_after) + open(log).read()[-3000:]
  b_files = sorted(os.listdir(out_b))
  resumed = start_two_processes(files, out_b, log)
  resumed_out = resumed[0].communicate(timeout=600)[0]
  for p in resumed:
    assert p.wait(timeout=60) == 0, resumed_out[-3000:] + open(log).read()[-3000:]
  stdout_a, stderr_a = a.communicate(timeout=600)
  assert a.returncode == 0, stderr_a[-3000:]
  return dict(a=out_a, b=out_b, stdout_a=stdout_a, resumed=resumed_out, b_files=b_files)


def load_report(out, step=None):
  """OUT/eval/<step>.json; without `step`, the only report in OUT."""
  if step is None:
    (name,) = os.listdir(os.path.join(out, "eval"))
    step = int(name.removesuffix(".json"))
  with open(os.path.join(out, "eval", f"{step}.json")) as f:
    return json.load(f)


def tensorboard_events(out) -> dict:
  """{tag: (step, scalar value or 'image')} of OUT/tensorboard's event files."""
  from tensorboardX.proto import event_pb2

  from muse_jax.data.records import read_tfrecord
  found = {}
  for name in os.listdir(os.path.join(out, "tensorboard")):
    for raw in read_tfrecord(os.path.join(out, "tensorboard", name)):
      event = event_pb2.Event.FromString(raw)
      for v in event.summary.value:
        found[v.tag] = (event.step, v.simple_value if v.HasField("simple_value") else "image")
  return found


def test_cascade_evaluation_writes_every_metric_and_recomputes_from_its_images(files, runs):
  report = load_report(runs["a"])
  m = report["metrics"]
  assert report["num_images"] == N and report["image_size"] == [32, 32]
  assert report["setup"]["source"] == "cascade" and report["setup"]["seed"] == 0
  assert m["fid"]["count"] == N and m["fid"]["reference"]["count"] == 12
  assert m["fid"]["inception"]["weights"] == files["inception"]
  assert not m["fid"]["inception"]["random_weights"] and "note" not in m["fid"]
  assert "not comparable" in m["fid"]["inception"]["input_size_note"]   # 75 px, not 299
  assert m["clip"]["count"] == N and not m["clip"]["clip"]["random_weights"]
  assert m["compositional"]["num_examples"] == N
  lines = runs["stdout_a"].splitlines()
  for i, done in ((1, 4), (2, 8), (3, 10)):
    line = next(l for l in lines if l.startswith(f"chunk {i}/3:"))
    assert f"{done}/{N} images" in line and "images/s" in line and "ETA" in line, line
  assert any(l.startswith("FID ") for l in lines) and any(l.startswith("CLIP score") for l in lines)
  # Every file of the run is named by the step evaluated: the base stage's checkpoint step.
  step = report["step"]
  assert step == report["setup"]["stage_steps"]["base"] == report["setup"]["step"] > 0
  assert sorted(os.listdir(runs["a"])) == ["eval", "grid", "images", "metrics.jsonl",
                                           "reference_stats.npz", "state", "tensorboard"]
  assert [os.listdir(os.path.join(runs["a"], d)) for d in ("eval", "grid", "state", "images")] \
      == [[f"{step}.json"], [f"{step}.png"], [f"{step}.npz"], [str(step)]]
  with Image.open(os.path.join(runs["a"], "grid", f"{step}.png")) as im:   # 4 tiles, x4
    assert im.size == ((4 * 32 + 3 * 2) * 4, 32 * 4)
  assert report["grid"]["captions"] == files["captions"][:4]
  # TensorBoard and metrics.jsonl: the figures at the base stage's step, and the grid.
  events = tensorboard_events(runs["a"])
  assert events["eval/fid/fid"] == (step, pytest.approx(m["fid"]["fid"], rel=1e-6))
  assert events["eval/clip/clip_score"][1] == pytest.approx(m["clip"]["clip_score"], rel=1e-6)
  assert events["eval/compositional/overall"][1] == pytest.approx(m["compositional"]["overall"])
  assert events["eval/samples"] == (step, "image")
  with open(os.path.join(runs["a"], "metrics.jsonl")) as f:
    assert json.loads(f.read())["eval/fid/fid"] == m["fid"]["fid"]

  # The same figures from the saved PNGs, computed independently of the runner.
  images = np.stack([np.asarray(Image.open(os.path.join(runs["a"], "images", str(step),
                                                    f"{i:06d}.png"))) for i in range(N)])
  assert images.shape == (N, 32, 32, 3) and len(np.unique(images.reshape(N, -1), axis=0)) == N
  acc = compositional.evaluate(images, files["captions"])
  assert {k: m["compositional"][k] for k in acc} == acc
  inception = scorers.load_inception(files["inception"], "fid", 75)
  ref = np.stack([np.asarray(Image.open(os.path.join(files["ref"], f)))
                  for f in sorted(os.listdir(files["ref"]))])
  feats = inception.features(np.concatenate([images, ref]))   # one compilation
  want = F.fid(F.FeatureStats(2048).update(feats[:N]), F.FeatureStats(2048).update(feats[N:]))
  assert want > 0
  np.testing.assert_allclose(m["fid"]["fid"], want, rtol=1e-5)
  clip = scorers.load_clip(files["clip"])
  tokens = clip.tokenizer(files["captions"])
  img, txt = clip.image_embeds(images), clip.text_embeds(tokens.ids, tokens.mask)
  cos = np.sum(img * txt, 1) / np.linalg.norm(img, axis=1) / np.linalg.norm(txt, axis=1)
  np.testing.assert_allclose(m["clip"]["clip_score"], 100 * np.mean(np.maximum(cos, 0)),
                             rtol=1e-5)
  np.testing.assert_allclose(m["clip"]["mean_cosine"], np.mean(cos), rtol=1e-5, atol=1e-7)


def test_a_killed_two_process_evaluation_resumes_and_equals_a_one_device_run(runs):
  """B (2 processes x 4 devices, batches of 8, killed and resumed) against A (one device,
  batches of 4): every image has the same tokens, whatever batch, device and process it is
  made on; decoded pixels and network outputs may differ by float round-off (XLA sums in
  another order for other per-device batch shapes), so the figures agree to round-off."""
  # Killed after its first chunk: progress saved, no report yet.
  assert "state" in runs["b_files"] and "eval" not in runs["b_files"]
  resumed = runs["resumed"]
  assert "resuming at chunk 2/2 (8/10 images done" in resumed, resumed
  assert "chunk 1/2" not in resumed   # nothing was redone
  assert "reusing" in resumed          # the reference statistics were computed once
  assert "over 8 device(s) of 2 process(es)" in resumed
  a, b = load_report(runs["a"]), load_report(runs["b"])
  ma, mb = a["metrics"], b["metrics"]
  assert mb["compositional"] == ma["compositional"]
  assert mb["fid"]["count"] == mb["clip"]["count"] == N
  np.testing.assert_allclose(mb["fid"]["fid"], ma["fid"]["fid"], rtol=1e-4)
  for k in ("clip_score", "mean_cosine"):
    np.testing.assert_allclose(mb["clip"][k], ma["clip"][k], rtol=1e-4, atol=1e-6)
  for report in (a, b):   # batching differs by design
    for k in ("batch_size", "chunk_size"):
      report["setup"].pop(k)
  assert b["setup"] == a["setup"]


def _stats(tmp_path, name, captions, images, metrics, inception=None, max_chunks=None, step=0,
           log=lambda s: None):
  """The statistics arrays after runner.run (None if it stopped at max_chunks)."""
  ev = runner.Evaluation(out=str(tmp_path / name), captions=captions, metrics=metrics,
                         batch_size=2, chunk_size=CHUNK, identity={"images": "shapes"},
                         inception=inception, grid=0, step=step)
  acc = runner.run(ev, lambda idx: images[idx], log=log, max_chunks=max_chunks)
  return None if acc is None else (ev, acc, acc.arrays())


def assert_same(got, want):
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_resume_in_process_by_chunks_and_by_a_longer_num(tmp_path):
  exs = list(shapes.ShapesDataset("train", 9, 3, 32))
  images = np.stack([e.image for e in exs])
  captions = [e.caption for e in exs]
  captions[4] = exs[0].caption   # one wrong caption, so not every count is full
  inception = scorers.load_inception(None, "fid", 75)   # random weights
  metrics = ("fid", "compositional")
  assert inception.info["random_weights"] and inception.info["note"] == scorers.FID_RANDOM_NOTE
  ev, _, whole = _stats(tmp_path, "whole", captions, images, metrics, inception)
  assert whole["fid_count"] == 9 and 0 < whole["comp_overall"] < 9
  # Rerun once finished (9 images: the last chunk is partial): nothing is added again.
  said = []
  assert_same(_stats(tmp_path, "whole", captions, images, metrics, inception,
                     log=said.append)[2], whole)
  assert said == ["all 9 images done already"], said
  # Batch by batch in this process (as evaluation during training adds them): the same sums.
  acc = runner.Accumulators(metrics)
  for idx, valid in runner.padded_batches(9, 2):
    acc.update(ev, images[idx], [captions[i] for i in idx], valid)
  assert_same(acc.arrays(), whole)
  # Stopped after one chunk, then the rest: the same float64 sums, bit for bit (so the same
  # FID).
  assert _stats(tmp_path, "parts", captions, images, metrics, inception, max_chunks=1) is None
  with np.load(tmp_path / "parts" / "state" / "0.npz") as z:
    assert int(z["fid_count"]) == CHUNK and json.loads(str(z["meta"]))["done"] == CHUNK
  # Another step evaluated into the same OUT starts from zero, beside step 0's progress.
  said = []
  assert_same(_stats(tmp_path, "parts", captions, images, metrics, inception, step=5,
                     log=said.append)[2], whole)
  assert not any("resuming" in line for line in said), said
  assert sorted(os.listdir(tmp_path / "parts" / "state")) == ["0.npz", "5.npz"]
  assert_same(_stats(tmp_path, "parts", captions, images, metrics, inception)[2], whole)
  # --num growing in whole chunks continues too (8 = two chunks of 4, then all 9).
  _stats(tmp_path, "grow", captions[:8], images, metrics, inception)
  assert_same(_stats(tmp_path, "grow", captions, images, metrics, inception)[2], whole)
  # A run that stopped inside a chunk (6 in chunks of 4) cannot be continued by chunks.
  _stats(tmp_path, "odd", captions[:6], images, ("compositional",))
  with pytest.raises(ValueError, match="holds 6 evaluated images.*--num=6"):
    _stats(tmp_path, "odd", captions, images, ("compositional",))
  with pytest.raises(ValueError, match="another evaluation .* differs in metrics"):
    _stats(tmp_path, "odd", captions[:6], images, metrics, inception)


def test_bad_inputs_fail_at_once_with_one_line_and_status_2_and_folders_score_alike(
    files, runs, tmp_path):
  f, t = files, tmp_path
  (t / "empty.txt").write_text("\n  \n\n")
  (t / "cat.txt").write_text(f["captions"][0] + "\na photo of a cat\n")
  two = t / "two.txt"
  two.write_text("\n".join(f["captions"][:2]) + "\n")
  for name, arr in (("range", np.full((2, 8, 8, 3), 1.5, np.float32)),
                    ("dtype", np.zeros((2, 8, 8, 3), np.int32))):
    np.savez(t / f"{name}.npz", images=arr)
  for name, sizes in (("sizes", [(8, 8), (8, 9)]), ("ok", [(8, 8), (8, 8)])):
    (t / name).mkdir()
    for i, size in enumerate(sizes):
      Image.new("RGB", size).save(t / name / f"{i}.png")
  from safetensors.numpy import load_file, save_file
  sd = load_file(f["inception"])
  del sd["Mixed_6b.branch7x7_1.conv.weight"]
  sd["Mixed_7c.branch_pool.bn.running_var"] = np.ones((7,), np.float32)
  sd["Conv2d_9z.conv.weight"] = np.ones((1,), np.float32)
  save_file(sd, str(t / "bad_inception.safetensors"))
  F.save_stats(str(t / "ref.npz"), F.FeatureStats(2048).update(np.eye(2, 2048)))
  unused = "--images=/nonexistent"   # these cases fail before images are read
  fid_on_ok = [f"--captions={two}", f"--images={t}/ok", "--metrics=fid",
               f"--reference_stats={t}/ref.npz"]
  cases = {
      "empty captions": ([f"--captions={t}/empty.txt", unused, "--metrics=clip"],
                         f"error: --captions={t}/empty.txt holds no captions"),
      "not shapes": ([f"--captions={t}/cat.txt", unused, "--metrics=compositional"],
                     "error: --metrics=compositional needs shapes captions; caption 1 "
                     "('a photo of a cat')"),
      "no reference": ([f"--captions={two}", unused, "--metrics=fid"],
                       "error: --metrics=fid needs --reference_stats"),
      "float range": ([f"--captions={two}", f"--images={t}/range.npz", "--metrics=clip"],
                      f"error: --images={t}/range.npz: float images must lie in [0, 1], got "
                      "values in [1.5, 1.5]"),
      "dtype": ([f"--captions={two}", f"--images={t}/dtype.npz", "--metrics=clip"],
                f"error: --images={t}/dtype.npz: images must be uint8 (0..255) or float in "
                "[0, 1], got dtype int32"),
      "sizes": ([f"--captions={two}", f"--images={t}/sizes", "--metrics=compositional"],
                f"error: images of one set must have one size: {t}/sizes/1.png is 8x9"),
      "weights file": (fid_on_ok + [f"--inception_weights={t}/nope.safetensors"],
                       f"error: weights not found: {t}/nope.safetensors"),
      "bad keys": (fid_on_ok + [f"--inception_weights={t}/bad_inception.safetensors"],
                   f"error: {t}/bad_inception.safetensors does not match the model config; "
                   "1 missing: Mixed_6b.branch7x7_1.conv.weight; 1 unexpected: "
                   "Conv2d_9z.conv.weight; 1 misshapen: Mixed_7c.branch_pool.bn.running_var: "
                   "file (7,) vs model (192,)"),
      # A stage without a checkpoint: status 4, as muse_jax.sample.
      "no checkpoint": ([f"--captions={two}", "--config=configs/pipeline_tiny.py",
                         f"--workdir={t}/no_runs", "--metrics=compositional"],
                        f"error: no checkpoint in {t}/no_runs/base"),
  }
  procs = {}
  for name, (args, _) in cases.items():   # concurrently: each is mostly interpreter start-up
    cmd = [sys.executable, "-m", "muse_jax.evaluate", f"--out={t}/out_{len(procs)}", *args]
    procs[name] = subprocess.Popen(cmd, cwd=REPO, env=cli_env(1), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
  # Two that work: run A's saved PNGs scored as a folder (--images) on 8 devices, as step 9;
  # the statistics of the reference folder, written once (--save_stats).
  step_a = load_report(runs["a"])["step"]
  folder = subprocess.Popen(
      [sys.executable, "-m", "muse_jax.evaluate", f"--images={runs['a']}/images/{step_a}",
       f"--captions={f['captions_file']}", "--metrics=clip,compositional", "--batch_size=8",
       f"--clip_weights={f['clip']}", f"--out={t}/folder", "--step=9"],
      cwd=REPO, env=cli_env(8), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  stats_file = str(t / "ref_stats.npz")
  ok = subprocess.run([sys.executable, "-m", "muse_jax.evaluate", f"--save_stats={stats_file}",
                       f"--reference_images={f['ref']}", f"--inception_weights={f['inception']}",
                       "--inception_size=75", "--batch_size=5"],
                      cwd=REPO, env=cli_env(1), capture_output=True, text=True, timeout=300)
  for name, proc in procs.items():
    _, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    want = 4 if name == "no checkpoint" else 2
    assert proc.returncode == want, f"{name}: exit {proc.returncode}\n{err[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith(cases[name][1]), f"{name}:\n{err[-3000:]}"
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert f"wrote FID statistics of 12 images to {stats_file}" in ok.stdout
  info = F.load_stats_info(stats_file)
  assert info["count"] == 12 and info["inception"]["input_size"] == 75
  assert F.load_stats(stats_file).count == 12
  _, err = folder.communicate(timeout=300)
  assert folder.returncode == 0, err[-3000:]
  # The samples, read back from their PNGs, score as they did when sampled on one device.
  got, want = load_report(str(t / "folder")), load_report(runs["a"])["metrics"]
  assert got["setup"]["source"] == "images" and got["step"] == 9
  assert got["metrics"]["compositional"] == want["compositional"]
  for k in ("clip_score", "mean_cosine"):
    np.testing.assert_allclose(got["metrics"]["clip"][k], want["clip"][k], rtol=1e-5, atol=1e-7)

  # An earlier step (--images: 0) into the same OUT, its captions from a prepared TFDS
  # dataset (6 captions, tests/data/source_files.write_tfds): both steps keep their report,
  # grid and metrics.jsonl record.
  from muse_jax.evaluation import captions as C
  from tests.data.source_files import write_tfds
  write_tfds(str(t / "tfds"))
  spec = "tfds:muse_tiny_captions:train"
  run = subprocess.run(
      [sys.executable, "-m", "muse_jax.evaluate", f"--images={runs['a']}/images/{step_a}",
       f"--captions={spec}", "--caption_key=meta.caption", f"--tfds_data_dir={t}/tfds",
       "--metrics=clip", "--batch_size=6", f"--clip_weights={f['clip']}", f"--out={t}/folder"],
      cwd=REPO, env=cli_env(1), capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  tfds_report = load_report(str(t / "folder"), 0)
  assert tfds_report["captions"] == {"path": spec, "count": 6, "format": "tfds",
                                     "tfds_data_dir": f"{t}/tfds"}
  assert tfds_report["metrics"]["clip"]["count"] == 6
  assert tfds_report["setup"]["captions_sha256"] == inputs.captions_digest(
      C.read(spec, key="meta.caption", tfds_data_dir=f"{t}/tfds"))
  assert load_report(str(t / "folder"), 9) == got
  assert sorted(os.listdir(t / "folder" / "grid")) == ["0.png", "9.png"]
  with open(t / "folder" / "metrics.jsonl") as log:
    assert [json.loads(line)["step"] for line in log] == [9, 0]


def test_batches_must_split_over_every_device_and_pad_to_the_device_count():
  """In this process's 8 CPU devices: a batch size that does not split is refused in one line;
  a scorer on the mesh pads a part that does not fill its devices and cuts the result back."""
  from muse_jax.evaluation import devices
  with pytest.raises(ValueError, match=r"--batch_size=12 must be a multiple of the 8 devices"):
    devices.check_batch(12)
  devices.check_batch(16)
  assert devices.process_rows(list(range(8))) == list(range(8))   # one process: all of it
  mesh = devices.local_mesh()
  calls = []

  def fn(x):
    calls.append(devices.rows_on(mesh)(x).sharding.shard_shape(x.shape))
    return x * 2

  out = devices.padded_rows(fn, mesh.size)(np.arange(3))
  assert out.tolist() == [0, 2, 4] and calls == [(1,)]   # 8 rows, one per device
