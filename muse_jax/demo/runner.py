"""`Demo`: one demo workdir's state and its stages (muse_jax/demo/__init__.py has the overview).

Training stages go through muse_jax.training.loop, precompute through muse_jax.precompute.run;
samples and edits are in evaluate.py, metrics.json in report.py.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time

import ml_collections

from muse_jax.data.shapes import dataset as shapes
from muse_jax.demo.constants import SPLITS, STATE_FILE, STEPS
from muse_jax.demo.evaluate import run_edits, run_samples
from muse_jax.demo.validation import check_eval_config
from muse_jax.demo.report import write_report
from muse_jax.demo.stage_configs import (eval_captions_file, fingerprint, stage_configs,
                                         tokenizer_factor)
from muse_jax.encoders.text_encoder import TextEncoder
from muse_jax.evaluation.during_training import SampleEvaluation
from muse_jax.encoders.vq_tokenizer import VQTokenizer
from muse_jax.models import vqgan as V
from muse_jax.precompute.run import MANIFEST, run_precompute
from muse_jax.progress import format_duration
from muse_jax.sampling.loading import load_stage_params, sampling_stage, single_device_mesh
from muse_jax.sampling.pipeline import Pipeline
from muse_jax.training.loop import Trainer
from muse_jax.training.registry import validate
from muse_jax.workdir.checkpoints import latest_step


EXIT_TERMINATED = 128 + signal.SIGTERM


def _terminate(signum, frame):
  raise SystemExit(128 + signum)


@contextlib.contextmanager
def _sigterm_exits():
  """SIGTERM raises SystemExit(143) in the main thread, so that `Demo.run` keeps the time of
  the stage it stopped in (its default action would end the process at once). A training loop
  puts its own handler in place while it runs (checkpoint, then stop) and restores this one."""
  try:
    prev = signal.signal(signal.SIGTERM, _terminate)
  except ValueError:  # not the main thread: no signal handling
    yield
    return
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, prev)


class Demo:
  """Runs the stages of one demo workdir; `run()` does all of them."""

  def __init__(self, config, workdir: str, stream=None, argv=None):
    self.config = config
    self.workdir = os.path.abspath(workdir)
    self.stream = stream or sys.stdout
    self.argv = list(argv) if argv is not None else list(sys.argv)
    os.makedirs(self.workdir, exist_ok=True)
    self.cfgs = stage_configs(config, self.workdir)
    check_eval_config(config)
    self.state_path = os.path.join(self.workdir, STATE_FILE)
    self.state = {"stages": {}}
    if os.path.exists(self.state_path):
      with open(self.state_path) as fh:
        self.state = json.load(fh)
    self.t0 = self._since_finish = time.perf_counter()
    self.pipeline = None

  # --- bookkeeping -------------------------------------------------------------------------

  def log(self, stage: str, text: str) -> None:
    i = STEPS.index(stage) + 1
    print(f"[demo {i}/{len(STEPS)} {stage}] {text} ({format_duration(self.elapsed())} "
          "elapsed)", file=self.stream, flush=True)

  def elapsed(self) -> float:
    return time.perf_counter() - self.t0

  def _save_state(self) -> None:
    tmp = f"{self.state_path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
      json.dump(self.state, fh, indent=1, sort_keys=True)
      fh.write("\n")
    os.replace(tmp, self.state_path)

  def done(self, stage: str) -> dict | None:
    return self.state["stages"].get(stage)

  def finish(self, stage: str, seconds: float, **result) -> None:
    """Records `stage` as done; its seconds include those of earlier runs that stopped in it."""
    seconds += self.state.get("stopped_seconds", {}).pop(stage, 0.0)
    self.state["stages"][stage] = {"seconds": round(seconds, 2), **result}
    self._save_state()
    self._since_finish = time.perf_counter()

  def _record_stopped(self) -> str | None:
    """Keeps the time this run spent in the stage it stopped in (preempted, killed by a time
    limit, failed), so that the stage's seconds count every run that worked on it. Returns
    that stage."""
    stage = next((s for s in STEPS if s not in self.state["stages"]), None)
    if stage is None:
      return None
    stopped = self.state.setdefault("stopped_seconds", {})
    stopped[stage] = round(stopped.get(stage, 0.0) + time.perf_counter() - self._since_finish, 2)
    self._save_state()
    return stage

  def path(self, *parts) -> str:
    return os.path.join(self.workdir, *parts)

  def _check_fingerprint(self, stage: str, cfg) -> None:
    rec = self.done(stage)
    if rec and rec.get("config_sha") and rec["config_sha"] != fingerprint(cfg):
      self.log(stage, "warning: the config differs from the one that produced this stage's "
               "output; delete its entry in demo_state.json or use a new --workdir to redo it")

  # --- stages ------------------------------------------------------------------------------

  def run(self) -> dict:
    import jax
    self.log("tokenizer", f"workdir {self.workdir}; JAX {jax.__version__} on "
             f"{jax.device_count()} {jax.devices()[0].platform} device(s)")
    try:
      with _sigterm_exits():
        self.train_stage("tokenizer")
        self.precompute()
        self.write_eval_captions()
        self.train_stage("base")
        self.train_stage("sr")
        self.samples()
        self.edits()
    except BaseException as e:
      stage = self._record_stopped()
      if isinstance(e, SystemExit) and e.code == EXIT_TERMINATED and stage:
        self.log(stage, "stopped by SIGTERM; rerun the same command to resume")
      raise
    return self.report()

  def train_stage(self, stage: str) -> None:
    cfg = self.cfgs[stage]
    wd = self.path(stage)
    total = int(cfg.train.num_steps)
    self._check_fingerprint(stage, cfg)
    step = latest_step(wd)
    if step is not None and step >= total:
      rec = self.done(stage)
      if rec is None:  # finished by a run that was stopped before recording it
        self.finish(stage, 0.0, steps=step, config_sha=fingerprint(cfg), **loss_summary(wd))
      self.log(stage, f"finished already (step {step}); skipping")
      return
    validate(cfg)
    m = cfg.model
    if stage == "tokenizer":
      what = (f"VQGAN f{tokenizer_factor(m)} at {cfg.data.image_size}px, "
              f"{m.codebook_size} codes")
    elif stage == "base":
      what = f"base transformer, {m.grid_size}x{m.grid_size} tokens"
    else:
      what = (f"SR transformer, {m.lowres_grid_size}x{m.lowres_grid_size} -> "
              f"{m.grid_size}x{m.grid_size} tokens")
    self.log(stage, f"training the {what} for {total} steps (batch {cfg.train.batch_size}) "
             f"in {wd}" + (f", resuming from step {step}" if step else ""))
    t = time.perf_counter()
    hook = None
    if stage in ("base", "sr"):
      hook = SampleEvaluation.from_config(cfg, log=lambda line: self.log(stage, line))
    Trainer(cfg, wd, stream=self.stream, hooks=[hook] if hook else []).run()
    seconds = time.perf_counter() - t + (self.done(stage) or {}).get("seconds", 0.0)
    summary = loss_summary(wd)
    self.finish(stage, seconds, steps=total, config_sha=fingerprint(cfg), **summary)
    self.log(stage, f"done in {seconds:.0f} s; loss {summary.get('loss_first', float('nan')):.4g}"
             f" -> {summary.get('loss_last', float('nan')):.4g}")

  def precompute(self) -> None:
    cfg = self.cfgs["precompute"]
    wd = self.path("precompute")
    self._check_fingerprint("precompute", cfg)
    if os.path.exists(os.path.join(wd, MANIFEST)):
      if self.done("precompute") is None:
        self.finish("precompute", 0.0, config_sha=fingerprint(cfg))
      self.log("precompute", f"finished already ({wd}/{MANIFEST}); skipping")
      return
    s = cfg.data.shapes
    self.log("precompute", f"shapes train {s.num_train} + heldout {s.num_heldout} images -> "
             f"tokens at {cfg.tokenizer.resolution} and {cfg.sr_tokenizer.resolution} px + "
             f"random tiny T5 ({cfg.text_encoder.size}) embeddings in {wd}")
    t = time.perf_counter()
    manifest = run_precompute(cfg, wd, stream=self.stream)
    seconds = time.perf_counter() - t
    self.finish("precompute", seconds, config_sha=fingerprint(cfg),
                records={k: v["records"] for k, v in manifest["splits"].items()})
    self.log("precompute", f"done in {seconds:.0f} s")

  def write_eval_captions(self) -> None:
    """The evaluation captions of each split, one per line, for the base and SR stages'
    evaluation during training (their eval.samples.captions)."""
    for split in SPLITS:
      path = eval_captions_file(self.workdir, split)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      text = "".join(ex.caption + "\n" for ex in self.eval_captions(split))
      tmp = f"{path}.tmp-{os.getpid()}"
      with open(tmp, "w") as fh:
        fh.write(text)
      os.replace(tmp, path)

  def samples(self) -> None:
    run_samples(self)

  def edits(self) -> None:
    run_edits(self)

  def report(self) -> dict:
    return write_report(self)

  # --- what the stages share ---------------------------------------------------------------

  def load_pipeline(self):
    """The trained cascade (base -> SR -> VQ decode), built from this demo's stages."""
    if self.pipeline is not None:
      return self.pipeline
    mesh = single_device_mesh()
    stages = {}
    for name in ("base", "sr"):
      cfg = self.cfgs[name]
      params, step = load_stage_params(cfg, self.path(name), name=name)
      stages[name] = sampling_stage(name, cfg, params, step)
    vq_cfg = self.cfgs["tokenizer"]
    vq_params, _ = load_stage_params(vq_cfg, self.path("tokenizer"), name="tokenizer")
    vq = VQTokenizer(V.VQGANConfig.from_config(vq_cfg.model), vq_params, mesh)
    encoder = TextEncoder.from_config(self.cfgs["text_encoder"], mesh=mesh)
    sampling = ml_collections.ConfigDict(self.config.sampling.to_dict())
    self.pipeline = Pipeline(sampling, encoder, vq, stages["base"], stages["sr"], vq,
                             rng_impl=self.config.eval.get("rng_impl") or None)
    return self.pipeline

  def eval_captions(self, split: str) -> list:
    """`eval.num_captions` scenes of `split` (train-like: indices after the training set)."""
    e = self.config.eval
    return self.caption_scenes(split, int(e.num_captions), int(e.caption_seed_offset))

  def validation_captions(self) -> list:
    """`eval.validation_captions` scenes of the train split for choosing guidance: the
    train-like captions' indices at their own seed (seed + eval.validation_seed_offset), so
    neither training scenes nor evaluation captions, and never the held-out split."""
    e = self.config.eval
    return self.caption_scenes("train", int(e.validation_captions),
                               int(e.validation_seed_offset))

  def caption_scenes(self, split: str, n: int, seed_offset: int) -> list:
    """`n` scenes of `split` at shapes seed + `seed_offset` (on the train split, indexed past
    the training scenes)."""
    start = int(self.cfgs["precompute"].data.shapes.num_train) if split == "train" else 0
    seed = int(self.config.seed) + seed_offset
    return [self.scene(start + i, split, seed) for i in range(n)]

  def scene(self, index: int, split: str, seed: int):
    """Shapes example `index` of `split` at the SR output size, drawn from the training
    scenes' distribution (objects per group, share of two-group scenes, object size)."""
    s = self.cfgs["precompute"].data.shapes
    return shapes.generate(index, split, seed, int(self.config.image_size),
                           **shapes.scene_options(s))


def loss_summary(workdir: str) -> dict:
  """First and last training loss (and the last eval loss) from WORKDIR/metrics.jsonl."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  first = last = evl = None
  with open(path) as fh:
    for line in fh:
      rec = json.loads(line) if line.strip() else {}
      if "loss" in rec:
        first = rec if first is None else first
        last = rec
      if "eval_loss" in rec:
        evl = rec
  out = {}
  if first is not None:
    out.update(loss_first=first["loss"], loss_last=last["loss"], loss_last_step=last["step"])
    for k in ("rec_loss", "psnr", "codebook_perplexity"):
      if k in last:
        out[f"loss_last_{k}"] = last[k]
  if evl is not None:
    out["eval_loss"] = evl["eval_loss"]
  return out
