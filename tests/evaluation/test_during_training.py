"""Sample evaluation during training (muse_jax/evaluation/during_training.py) on the tiny
random cascade: the figures and images at step N equal those `muse_jax.evaluate` computes from
the checkpoint of step N (its code path in-process: Pipeline.from_config, runner.cascade_images,
runner.run, runner.summarize), for an SR stage, whose samples start from the tokens the hook
samples once from a trained base stage (so both stages' sampling is compared); bad settings
fail before the first step. That the hook leaves the training as it
is without it: tests/training/test_resume_and_signals.py (its two-process run).

The SR stage trains 2 steps on synthetic data (2 devices: the rows of an 8-caption batch are
sharded over them), evaluating after each. Compiles (the train step, the samplers of both
stages, in the hook and in the standalone pipeline) take most of the module's time.
"""
import os

import numpy as np
import pytest

from muse_jax.configs.checks import ConfigError
from muse_jax.evaluation import runner
from muse_jax.evaluation.during_training import SampleEvaluation, caption_sets
from muse_jax.sampling import loading
from muse_jax.sampling.pipeline import Pipeline
from muse_jax.training.loop import Trainer, read_metrics
from tests.evaluation.helpers import shapes_captions
from tests.sampling.test_chain import chained_run  # noqa: F401 (fixture)
from tests.sampling.test_pipeline import spiece  # noqa: F401 (fixture)

STEPS, BATCH = 2, 8   # evaluations after steps 1 and 2; batches of 8 and 2 (padded)
METRICS = ("compositional",)
DEVICES = 2           # the rows of a batch are sharded over both


def stage_config(pipeline_config, name, root, captions, steps=STEPS):
  """The pipeline's tiny base or SR training config on synthetic data, evaluating samples
  after every step."""
  c = loading.stage_config(pipeline_config.pipeline[name])
  c.train.update(dict(batch_size=8, num_steps=steps, log_every=1, eval_every=0,
                      tensorboard=False))
  c.checkpoint.update(dict(every_steps=1, keep=steps))
  c.data.update(dict(source="synthetic", path=""))
  s = c.eval.samples
  s.update(dict(every=1, captions=captions, metrics=",".join(METRICS), batch_size=BATCH,
                precompute=os.path.join(root, "precompute"), grid=4))
  s.sampling.update(pipeline_config.sampling.to_dict())
  if name == "sr":
    s.update(dict(base_workdir=os.path.join(root, "base"), vq_hi=os.path.join(root, "vq_lo")))
  return c


@pytest.fixture(scope="module")
def run(chained_run, tmp_path_factory):  # noqa: F811
  """The SR stage trained STEPS steps with the hook."""
  import jax
  root, pipeline_config = chained_run
  out = tmp_path_factory.mktemp("during")
  captions = shapes_captions(13)
  (out / "a.txt").write_text("\n".join(captions[:10]) + "\n")
  (out / "b.txt").write_text("\n".join(captions[10:]) + "\n")
  spec = f"train_like={out / 'a.txt'},heldout={out / 'b.txt'}"
  config = stage_config(pipeline_config, "sr", root, spec)
  hook = SampleEvaluation.from_config(config, log=lambda s: None, keep_images=True)
  workdir = str(out / "sr")
  Trainer(config, workdir, hooks=[hook], devices=jax.devices()[:DEVICES]).run()
  return dict(root=root, pipeline_config=pipeline_config, out=out, hook=hook, workdir=workdir)


def standalone(root, pipeline_config, name, workdir, steps, sets, clip):
  """What `muse_jax.evaluate --config` computes from the checkpoint of each step:
  {(step, set): (results, images)}. One pipeline; its stage's params replaced per step."""
  import dataclasses

  import ml_collections
  c = ml_collections.ConfigDict(pipeline_config.to_dict())
  c.pipeline[name].workdir = workdir
  c.pipeline[name].step = steps[0]
  if name == "base":
    c.pipeline.sr.config = ""
  pipe = Pipeline.from_config(c, root)
  out = {}
  for step in steps:
    stage = getattr(pipe, name)
    params, _ = loading.load_stage_params(stage.config, workdir, step=step)
    setattr(pipe, name, dataclasses.replace(stage, params=params, step=step))
    for set_name, captions in sets.items():
      images_fn = runner.cascade_images(pipe, captions, 0)
      ev = runner.Evaluation(out=os.path.join(workdir, f"standalone_{step}_{set_name}"),
                             captions=captions, metrics=METRICS, batch_size=BATCH,
                             chunk_size=BATCH, identity={}, clip=clip)
      acc = runner.run(ev, images_fn, log=lambda s: None)
      images = np.concatenate([images_fn(idx)[:valid]
                               for idx, valid in runner.padded_batches(len(captions), BATCH)])
      out[step, set_name] = runner.summarize(ev, acc), images
  return out


def logged(workdir, step):
  return {k: v for r in read_metrics(workdir) if r["step"] == step for k, v in r.items()
          if k.startswith("eval/")}


def test_figures_at_step_n_equal_the_standalone_evaluation_of_checkpoint_n(run):
  hook, wd = run["hook"], run["workdir"]
  sets = {n: x.captions for n, x in hook.sets.items()}
  steps = list(range(1, STEPS + 1))
  want = standalone(run["root"], run["pipeline_config"], "sr", wd, steps, sets, hook.clip)
  for step in steps:
    got = logged(wd, step)
    assert len(got) == 2 * 5, sorted(got)   # 2 sets x 5 compositional values
    for set_name in sets:
      results, images = want[step, set_name]
      for k in ("count", "colour", "shape", "position", "overall"):
        assert got[f"eval/compositional/{set_name}/{k}"] == results["compositional"][k], (
            step, set_name, k)
      if step == steps[-1]:   # the hook keeps the images of its last evaluation
        kept_results, kept = hook.latest[set_name]
        np.testing.assert_array_equal(kept, images)
        assert kept_results["compositional"] == results["compositional"]


def test_bad_settings_fail_before_training(run, tmp_path):
  root, pipeline_config, out = run["root"], run["pipeline_config"], run["out"]
  good = f"{out / 'a.txt'}"
  (tmp_path / "free.txt").write_text("a photo of a cat\n")
  (tmp_path / "empty.txt").write_text("\n \n")
  cases = [
      (dict(captions=""), "needs eval.samples.captions"),
      (dict(captions=str(tmp_path / "missing.txt")), "no such file"),
      (dict(captions=str(tmp_path / "empty.txt")), "holds no captions"),
      (dict(captions=str(tmp_path / "free.txt")), "not in the shapes grammar"),
      (dict(captions=f"x={good},x={good}"), "unique"),
      (dict(captions=good, metrics="fid,ssim"), "choose from fid, clip, compositional"),
      (dict(captions=good, metrics="fid"), "reference_stats"),
      (dict(captions=good, precompute=str(tmp_path)), "manifest.json"),
  ]
  for settings, message in cases:
    config = stage_config(pipeline_config, "base", root, good)
    config.eval.samples.update(settings)
    with pytest.raises(ConfigError, match=message):
      SampleEvaluation.from_config(config)
  for base_workdir, message in (("", "needs eval.samples.base_workdir"),
                                 (str(tmp_path), "config.json|checkpoint")):
    config = stage_config(pipeline_config, "sr", root, good)
    config.eval.samples.base_workdir = base_workdir
    with pytest.raises(ConfigError, match=message):
      SampleEvaluation.from_config(config)
  assert list(caption_sets(good)) == ["a"]
