"""The end-to-end demo (muse_jax.demo) with a micro config: every stage, outputs, resume."""
import io
import json
import os
import sys

import pytest

from configs import demo_cpu, demo_gpu
from muse_jax import demo
from muse_jax.data.shapes import dataset as shapes, grammar
from muse_jax.demo.evaluate import evaluate_breakdowns
from muse_jax.training.registry import validate


def micro_config():
  """demo_cpu shrunk to a few steps per stage: 16px base / 32px SR, tiny models."""
  c = demo_cpu.get_config()
  c.image_size, c.lowres_size = 32, 16
  c.png_scale = 1
  c.vqgan.train.update(dict(batch_size=8, num_steps=3, log_every=1))
  c.vqgan.checkpoint.every_steps = 2
  c.precompute.data.shapes.update(dict(num_train=48, num_heldout=16))
  c.precompute.precompute.update(dict(batch_size=16, examples_per_shard=32,
                                      spiece_corpus_size=200))
  for name in ("base", "sr"):
    s = c[name]
    s.model.update(dict(hidden_size=32, num_layers=1, num_heads=2, head_dim=16, mlp_dim=64))
    s.train.update(dict(batch_size=8, num_steps=3, log_every=1, eval_every=3))
    s.checkpoint.every_steps = 2
    # Evaluation during training once, at the last step, of the base stage only (the SR
    # stage's: tests/evaluation/test_during_training.py), to keep the compiles few.
    s.eval.samples.update(dict(every=3 if name == "base" else 0, num=2, batch_size=2))
  c.sr.model.lowres_num_layers = 1
  c.sampling.update(dict(base_steps=2, sr_steps=2))
  c.sampling.editing.mask_free_iterations = 2
  # Batch 1: the guided sampler compiled for the metrics is reused by in/outpainting.
  # 3 validation captions against 2 per evaluation split: the counts tell the sets apart.
  c.eval.update(dict(num_captions=2, batch_size=1, grid_images=2, grid_columns=2,
                     validation_captions=3, guidance_sweep=((1.5, 0.0),),
                     use_chosen_guidance=True, temperature_sweep=(0.0,),
                     use_chosen_temperature=True))
  c.edits.png_scale = 1
  return c


def test_demo_end_to_end_and_resume(tmp_path, monkeypatch):
  # The demo path must run where TensorFlow is not installed (GPU machines): any import of it
  # from here on fails.
  monkeypatch.setitem(sys.modules, "tensorflow", None)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  workdir = str(tmp_path / "demo")
  out = io.StringIO()
  metrics = demo.Demo(micro_config(), workdir, stream=out, argv=["demo"]).run()
  log = out.getvalue()
  for stage in demo.STEPS:
    assert f" {stage}]" in log, stage

  for name in ("samples_train.png", "samples_heldout.png", "samples_train_no_cfg.png",
               "samples_heldout_no_cfg.png", "inpaint.png", "outpaint.png", "maskfree.png",
               "metrics.json"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  with open(os.path.join(workdir, "metrics.json")) as f:
    saved = json.load(f)
  assert saved["accuracy"] == metrics["accuracy"]
  for split in ("train", "heldout"):
    for mode in ("cfg", "no_cfg"):
      acc = saved["accuracy"][split][mode]
      assert set(acc) == {"count", "colour", "shape", "position", "overall", "num_examples"}
      assert acc["num_examples"] == 2
      assert all(0.0 <= acc[k] <= 1.0 for k in ("count", "colour", "shape", "position"))
    assert len(saved["samples"][split]["grid_captions"]) == 2
    # Per number of objects in the caption: the buckets partition the captions.
    for mode in ("cfg", "no_cfg"):
      by = saved["accuracy_by_objects"][split][mode]
      assert all(1 <= int(n) <= 8 for n in by)
      assert sum(r["num_examples"] for r in by.values()) == 2
      assert sum(r["overall"] * r["num_examples"] for r in by.values()) == pytest.approx(
          saved["accuracy"][split][mode]["overall"] * 2)
    assert f"{split} guidance" not in log  # the sweep is not scored on evaluation captions
    assert saved["reference"][split]["dataset_images"]["overall"] > 0.5
  # Per held-out pair: the held-out split only, each pair over the captions that have it.
  scenes = [grammar.parse_caption(c) for c in saved["samples"]["heldout"]["captions"]]
  counts = {" ".join(p): sum(p in {g.pair for g in sc.groups} for sc in scenes)
            for p in shapes.HELDOUT_PAIRS}
  assert list(saved["accuracy_by_heldout_pair"]) == ["heldout"]
  for mode in ("cfg", "no_cfg"):
    by_pair = saved["accuracy_by_heldout_pair"]["heldout"][mode]
    assert {p: r["num_examples"] for p, r in by_pair.items()} == {
        p: n for p, n in counts.items() if n}
  assert "all four (colour) by held-out pair" in log
  # Guidance is chosen on the validation captions only, and (use_chosen_guidance) the
  # evaluation's cfg rows are sampled at the choice.
  val = saved["validation"]
  assert val["captions"] == [ex.caption for ex in
                             demo.Demo(micro_config(), workdir).validation_captions()]
  assert list(val["sweep"]) == ["1", "0", "1.5/0"] and val["default"] == "1"
  assert all(r["num_examples"] == 3 for r in val["sweep"].values())
  best = max(r["overall"] for r in val["sweep"].values())
  assert val["sweep"][val["chosen"]]["overall"] == best
  assert val["chosen"] == "1" or val["sweep"]["1"]["overall"] < best
  assert saved["guidance_scale"] == {**val["chosen_guidance"], "chosen_on_validation": True}
  assert "validation guidance 1.5/0: " in log and "validation: chosen guidance" in log
  # Then temperature, at the chosen guidance: the config's 0.25 (that guidance's row above,
  # not sampled again) and the sweep's 0, and the evaluation samples at the choice.
  assert list(val["temperature_sweep"]) == ["0.25", "0"]
  assert val["temperature_guidance"] == val["chosen"]
  assert val["temperature_sweep"]["0.25"] == val["sweep"][val["chosen"]]
  assert "validation temperature 0: " in log and "validation temperature 0.25" not in log
  t_best = max(r["overall"] for r in val["temperature_sweep"].values())
  t_name = "0" if val["chosen_temperature"] == 0 else "0.25"
  assert val["temperature_sweep"][t_name]["overall"] == t_best
  assert saved["temperature"] == {"value": val["chosen_temperature"],
                                  "chosen_on_validation": True}
  assert set(saved["edits"]) == {"inpaint", "outpaint", "maskfree"}
  assert set(saved["stage_seconds"]) >= set(demo.STEPS) - {"report"}
  assert saved["training"]["base"]["steps"] == 3
  for name in ("base", "sr"):  # train against eval (held-out split) loss and token accuracy
    (gap,) = saved["generalisation"][name]
    assert gap["step"] == 3 and gap["train_steps"] == 3
    assert set(gap) >= {"train_loss", "eval_loss", "train_accuracy", "eval_accuracy"}
  # Detector accuracy per split during training (eval.samples), in metrics.json.
  (curve,) = saved["accuracy_curves"]["base"]
  assert curve["step"] == 3 and saved["accuracy_curves"]["sr"] == []
  for split in ("train_like", "heldout"):
    assert set(curve[split]) == {"count", "colour", "shape", "position", "overall"}
    assert all(0.0 <= v <= 1.0 for v in curve[split].values())
  assert "loss_first" in saved["training"]["sr"] and "loss_last" in saved["training"]["tokenizer"]
  assert saved["configs"]["base"]["model"]["grid_size"] == 4      # 16 px / f4
  assert saved["configs"]["sr"]["model"]["lowres_grid_size"] == 4
  assert saved["configs"]["sr"]["model"]["grid_size"] == 8        # 32 px / f4

  # Rerunning skips every finished stage and leaves the results as they were.
  out = io.StringIO()
  again = demo.Demo(micro_config(), workdir, stream=out, argv=["demo"]).run()
  log = out.getvalue()
  for stage in ("tokenizer", "precompute", "base", "sr", "samples", "edits"):
    assert f"{stage}] finished already" in log, (stage, log)
  assert "Starting a new run" not in log and "compiled and ran" not in log
  assert again["accuracy"] == metrics["accuracy"]
  assert again["stage_seconds"]["base"] == metrics["stage_seconds"]["base"]

  # benchmarks/demo_diagnosis.py reads the finished workdir: one row per stage, and its
  # cascade is the demo's own guided samples of those captions.
  config_file = tmp_path / "micro.py"
  config_file.write_text("from tests.test_demo import micro_config as get_config\n")
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
  try:
    import demo_diagnosis
    import sample_quality
  finally:
    sys.path.pop(0)
  printed = io.StringIO()
  monkeypatch.setattr(sys, "stdout", printed)
  demo_diagnosis.main([f"--config={config_file}", f"--workdir={workdir}", "--num=2"])
  monkeypatch.undo()
  rows = {line[:22].strip(): line for line in printed.getvalue().splitlines()[1:]}
  assert list(rows) == ["dataset, low-res", "tokenizer, low-res", "tokenizer, output",
                        "base samples", "SR from true low-res", "... other captions",
                        "cascade"]
  cascade = saved["accuracy"]["train"]["cfg"]
  assert f"overall {100 * cascade['overall']:5.1f}%" in rows["cascade"]

  # benchmarks/sample_quality.py --retrain=base: a variant base stage (two layers) trained in a
  # new directory on the workdir's tokenizer and precompute, scored with its SR stage as it was.
  variant = tmp_path / "variant.py"
  variant.write_text(
      "from tests.test_demo import micro_config\n\n\n"
      "def get_config():\n"
      "  c = micro_config()\n"
      "  c.base.model.num_layers = 2\n"
      "  c.base.eval.samples.every = 0\n"
      "  c.eval.update(dict(validation_captions=0, guidance_sweep=(), temperature_sweep=(),\n"
      "                     use_chosen_guidance=False, use_chosen_temperature=False))\n"
      "  return c\n")
  out_dir = tmp_path / "variant_out"
  monkeypatch.setattr(sys, "stdout", io.StringIO())
  sample_quality.main([f"--config={variant}", f"--workdir={workdir}", f"--out={out_dir}",
                       "--retrain=base"])
  monkeypatch.undo()
  assert os.path.islink(out_dir / "sr") and os.path.islink(out_dir / "precompute")
  assert not os.path.islink(out_dir / "base")
  with open(out_dir / "demo_state.json") as f:
    variant_state = json.load(f)["stages"]
  with open(os.path.join(workdir, "demo_state.json")) as f:
    source_state = json.load(f)["stages"]
  assert variant_state["base"]["steps"] == 3
  assert variant_state["base"]["config_sha"] != source_state["base"]["config_sha"]
  assert variant_state["samples"]["heldout"]["cfg"]["num_examples"] == 2


def test_breakdowns_per_object_count_and_held_out_pair():
  examples = [shapes.generate(i, "heldout", seed=3, resolution=64, max_count=2)
              for i in range(12)]
  images = [ex.image for ex in examples]
  captions = [ex.caption for ex in examples]
  overall, by_objects, by_pair = evaluate_breakdowns(images, captions)
  assert overall["overall"] == 1.0 and overall["num_examples"] == 12
  assert sum(r["num_examples"] for r in by_objects.values()) == 12
  assert by_pair and set(by_pair) <= {" ".join(p) for p in shapes.HELDOUT_PAIRS}
  for pair, r in by_pair.items():
    with_pair = [ex for ex in examples if tuple(pair.split()) in {g.pair for g in ex.scene.groups}]
    assert r["num_examples"] == len(with_pair) and r["overall"] == 1.0
  # Each image scored against the next one's caption: the pairs' rates follow those captions.
  _, _, shifted = evaluate_breakdowns(images[1:] + images[:1], captions)
  assert set(shifted) == set(by_pair)
  assert min(r["overall"] for r in shifted.values()) < 1.0
  train = [shapes.generate(i, "train", seed=3, resolution=64, max_count=2) for i in range(4)]
  assert evaluate_breakdowns([ex.image for ex in train], [ex.caption for ex in train])[2] == {}


def test_a_stage_stopped_partway_counts_the_time_of_every_run(tmp_path, monkeypatch):
  """A run killed in a stage (a time limit, a preemption) keeps the time it spent there, and
  the run that finishes the stage adds it to the stage's seconds."""
  import time
  now = [1000.0]
  monkeypatch.setattr(time, "perf_counter", lambda: now[0])
  workdir = str(tmp_path / "demo")

  def stopped_in_precompute():
    now[0] += 7.0
    raise KeyboardInterrupt

  first = demo.Demo(micro_config(), workdir, stream=io.StringIO())
  first.finish("tokenizer", 5.0)
  monkeypatch.setattr(first, "train_stage", lambda stage: None)
  monkeypatch.setattr(first, "precompute", stopped_in_precompute)
  with pytest.raises(KeyboardInterrupt):
    first.run()
  second = demo.Demo(micro_config(), workdir, stream=io.StringIO())
  assert second.state["stopped_seconds"] == {"precompute": 7.0}
  second.finish("precompute", 3.0)
  third = demo.Demo(micro_config(), workdir)
  assert third.state["stages"]["precompute"]["seconds"] == 10.0
  assert third.state["stages"]["tokenizer"]["seconds"] == 5.0
  assert third.state["stopped_seconds"] == {}


def test_sigterm_outside_a_training_loop_keeps_the_stage_time_and_exits_143(tmp_path,
                                                                           monkeypatch):
  """A time limit's SIGTERM that lands between training steps' handlers (in precompute, in a
  stage's compile) stops the demo with status 143 and the time it spent in that stage."""
  import signal
  import time
  workdir = str(tmp_path / "demo")
  d = demo.Demo(micro_config(), workdir, stream=io.StringIO())
  d.finish("tokenizer", 5.0)
  monkeypatch.setattr(d, "train_stage", lambda stage: None)

  def killed_in_precompute():
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the handler raises between these bytecodes
      time.sleep(0.01)
    raise AssertionError("SIGTERM did not stop the stage")

  monkeypatch.setattr(d, "precompute", killed_in_precompute)
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(SystemExit) as stop:
    d.run()
  assert stop.value.code == 143
  assert signal.getsignal(signal.SIGTERM) is before
  assert set(demo.Demo(micro_config(), workdir).state["stopped_seconds"]) == {"precompute"}
  assert "precompute] stopped by SIGTERM; rerun" in d.stream.getvalue()


@pytest.mark.parametrize("module", [demo_cpu, demo_gpu])
def test_demo_configs_link_the_stages(module, tmp_path):
  cfgs = demo.stage_configs(module.get_config(), str(tmp_path))
  for name in ("tokenizer", "base", "sr"):
    validate(cfgs[name])
  from muse_jax.models.vqgan import VQGANConfig
  f = VQGANConfig.from_config(cfgs["tokenizer"].model).downsample_factor
  assert f == 4  # f4: both demos' tokenizers
  assert cfgs["precompute"].tokenizer.resolution == cfgs["base"].model.grid_size * f
  assert cfgs["precompute"].sr_tokenizer.resolution == cfgs["sr"].model.grid_size * f
  assert cfgs["sr"].model.lowres_grid_size == cfgs["base"].model.grid_size
  assert cfgs["base"].data.reader == cfgs["sr"].data.reader == "numpy"  # no TensorFlow
  # The tokenizer trains on the scenes that the precompute tokenizes.
  from muse_jax.data.shapes.dataset import scene_options
  assert (scene_options(cfgs["tokenizer"].data.shapes) ==
          scene_options(cfgs["precompute"].data.shapes))
  if module is demo_gpu:  # cuDNN flash attention takes the cross-attention keys
    assert cfgs["base"].model.text_length % 64 == 0
    assert (cfgs["sr"].model.lowres_grid_size ** 2 + cfgs["sr"].model.text_length) % 64 == 0


@pytest.mark.parametrize("module", [demo_cpu, demo_gpu])
def test_demo_configs_lay_out_their_most_crowded_scenes(module):
  """Every position and relation with the most objects the config draws, at its object size:
  a size that cannot fit them stops precompute partway through."""
  import numpy as np
  from muse_jax.data.shapes import grammar, layout
  opts = module.get_config().precompute.data.shapes
  n, scenes = int(opts.max_count), []
  for shape in grammar.SHAPES:
    group = grammar.Group(n, "red", shape)
    scenes += [grammar.Scene((group,), position=p) for p in grammar.POSITIONS]
    if opts.two_group_prob > 0:
      other = grammar.Group(n, "blue", grammar.SHAPES[0])
      scenes += [grammar.Scene((group, other), relation=r) for r in grammar.RELATIONS]
  for seed, scene in enumerate(scenes * 2):
    objs = layout.layout_scene(scene, np.random.default_rng(seed),
                               object_scale=float(opts.object_scale))
    assert len(objs) == scene.num_objects


def test_guidance_sweep_entries_are_a_scale_or_a_base_sr_pair():
  from muse_jax.demo.validation import sweep_name, sweep_scales
  assert sweep_scales(2) == (2.0, 2.0) and sweep_name(2.0, 2.0) == "2"
  assert sweep_scales((3, 0)) == (3.0, 0.0) and sweep_name(3.0, 0.0) == "3/0"
  with pytest.raises(ValueError, match="pair"):
    sweep_scales((1, 2, 3))


def test_validation_captions_are_their_own_train_split_scenes(tmp_path):
  """Validation scenes: train split, drawn at a seed of their own, so neither the train-like
  evaluation captions' scenes nor training's (seed 0, indices below num_train)."""
  from muse_jax.data.shapes import dataset as shapes
  c = micro_config()
  d = demo.Demo(c, str(tmp_path))
  val = d.validation_captions()
  assert len(val) == 3
  train_like = {ex.id for ex in d.eval_captions("train")}
  heldout = {ex.id for ex in d.eval_captions("heldout")}
  num_train = c.precompute.data.shapes.num_train
  seed = int(d.cfgs["precompute"].data.shapes.seed)  # what precompute trains on
  training = {shapes.generate(i, "train", seed, 16).id for i in range(num_train)}
  for ex in val:
    assert ex.id.startswith(f"shapes-train-{c.seed + 2}-"), ex.id
    assert ex.id not in train_like | heldout | training
    assert not any((g.colour, g.shape) in shapes.HELDOUT_PAIRS for g in ex.scene.groups)
  # Different draws: the images differ from the train-like evaluation scenes at those indices.
  assert any((a.image != b.image).any() for a, b in zip(val, d.eval_captions("train")))


def test_guidance_is_chosen_on_validation_and_sweeps_need_it(tmp_path):
  from muse_jax.configs.checks import ConfigError
  from muse_jax.demo.validation import (choose_best, guidance_candidates, headline_guidance,
                                       headline_temperature, temperature_candidates)
  assert list(guidance_candidates((1.0, 1.0), (0.5, (1, 1), (3, 0)))) == ["1", "0", "0.5", "3/0"]
  acc = lambda x: {"overall": x}  # noqa: E731
  assert choose_best({"1": acc(0.5), "0": acc(0.7), "2": acc(0.7)}, "1") == "0"
  assert choose_best({"0": acc(0.7), "1": acc(0.7), "2": acc(0.6)}, "1") == "1"  # tie
  assert temperature_candidates(1.0, (0.5, 1, 0.25)) == {"1": 1.0, "0.5": 0.5, "0.25": 0.25}
  val = {"chosen": "0.5", "chosen_guidance": {"base": 0.5, "sr": 0.5}}
  assert headline_guidance((1.0, 1.0), val, True) == ((0.5, 0.5), True)
  assert headline_guidance((1.0, 1.0), val, False) == ((1.0, 1.0), False)
  assert headline_temperature(1.0, {"chosen_temperature": 0.25}, True) == (0.25, True)
  assert headline_temperature(1.0, {"chosen_temperature": 0.25}, False) == (1.0, False)
  for key, value, match in (("validation_captions", 0, "guidance_sweep"),
                            ("validation_seed_offset", 1, "caption_seed_offset"),
                            ("validation_seed_offset", 0, "training"),
                            ("guidance_sweep", ((1, 2, 3),), "pair"),
                            ("temperature_sweep", (-1.0,), ">= 0"),
                            ("temperature_sweep", ("a",), ">= 0")):
    c = micro_config()
    c.eval[key] = value
    with pytest.raises(ConfigError, match=match):
      demo.Demo(c, str(tmp_path))
  c = micro_config()
  c.eval.update(dict(validation_captions=0, guidance_sweep=(), temperature_sweep=(),
                     use_chosen_temperature=False))
  with pytest.raises(ConfigError, match="use_chosen_guidance"):
    demo.Demo(c, str(tmp_path))
  c.eval.update(dict(use_chosen_guidance=False, temperature_sweep=(0.5,)))
  with pytest.raises(ConfigError, match="temperature_sweep is scored on the validation"):
    demo.Demo(c, str(tmp_path))
  c.eval.update(dict(temperature_sweep=(), use_chosen_temperature=True))
  with pytest.raises(ConfigError, match="use_chosen_temperature"):
    demo.Demo(c, str(tmp_path))
