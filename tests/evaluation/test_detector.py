"""Detector: >= 99% on dataset images, per-attribute scores, low scores for wrong captions."""
import dataclasses

import numpy as np
import pytest

from muse_jax.data.shapes import dataset as shapes, grammar
from muse_jax.evaluation import compositional, detector


@pytest.mark.parametrize("resolution,num", [(64, 300), (256, 100), (512, 30)])
def test_detector_reads_dataset_images(resolution, num):
  exs = [shapes.generate(i, split, seed=11, resolution=resolution)
         for split in ("train", "heldout") for i in range(num // 2)]
  correct = sum(detector.read_scene(e.image).canonical() == e.scene.canonical() for e in exs)
  assert correct / len(exs) >= 0.99, (resolution, correct, len(exs))
  acc = compositional.evaluate([e.image for e in exs], [e.caption for e in exs])
  assert acc["num_examples"] == len(exs)
  for m in compositional.METRICS:
    assert acc[m] >= 0.99, (m, acc)


def test_detected_objects_match_the_layout():
  ex = shapes.generate(3, "train", seed=0, resolution=128)
  objs = detector.detect_objects(ex.image)
  assert len(objs) == len(ex.objects)
  for o in ex.objects:
    near = min(objs, key=lambda d: (d.cx - o.cx) ** 2 + (d.cy - o.cy) ** 2)
    assert (near.colour, near.shape) == (o.colour, o.shape)
    assert abs(near.cx - o.cx) < 0.02 and abs(near.cy - o.cy) < 0.02


def _perturb(scene, attribute, rng):
  g = list(scene.groups)
  i = int(rng.integers(len(g)))
  if attribute == "colour":
    others = [c for c in grammar.COLOURS if c != g[i].colour and
              all((c, g[i].shape) != h.pair for h in g)]
    g[i] = dataclasses.replace(g[i], colour=others[rng.integers(len(others))])
  elif attribute == "shape":
    others = [s for s in grammar.SHAPES if s != g[i].shape and
              all((g[i].colour, s) != h.pair for h in g)]
    g[i] = dataclasses.replace(g[i], shape=others[rng.integers(len(others))])
  elif attribute == "count":
    g[i] = dataclasses.replace(g[i], count=g[i].count % grammar.MAX_COUNT + 1)
  elif attribute == "position":
    if scene.position:
      others = [p for p in grammar.POSITIONS if p != scene.position]
      return grammar.Scene(tuple(g), position=others[rng.integers(len(others))])
    opposite = {"above": "below", "below": "above", "left of": "right of",
                "right of": "left of"}
    return grammar.Scene(tuple(g), relation=opposite[scene.relation])
  return dataclasses.replace(scene, groups=tuple(g))


@pytest.mark.parametrize("attribute", detector.ATTRIBUTES)
def test_wrong_attribute_is_caught(attribute):
  rng = np.random.default_rng(0)
  for i in range(25):
    ex = shapes.generate(i, "train", seed=2, resolution=64)
    right = detector.score(ex.image, ex.caption)
    assert all(right.values()), (ex.caption, right)
    wrong = grammar.scene_to_caption(_perturb(ex.scene, attribute, rng))
    result = detector.score(ex.image, wrong)
    assert not result[attribute] and not result["overall"], (ex.caption, wrong, result)
    # The other attributes are still credited.
    for other in detector.ATTRIBUTES:
      if other != attribute and not (attribute == "count" and other == "position"):
        assert result[other], (ex.caption, wrong, other, result)


def test_shuffled_captions_score_low():
  exs = [shapes.generate(i, "train", seed=4, resolution=64) for i in range(60)]
  shuffled = [exs[(i + 1) % len(exs)].caption for i in range(len(exs))]
  acc = compositional.evaluate([e.image for e in exs], shuffled)
  assert acc["overall"] <= 0.05 and acc["colour"] < 0.5 and acc["shape"] < 0.5, acc
  blank = np.full((64, 64, 3), grammar.BACKGROUND, np.uint8)
  assert not any(detector.score(blank, exs[0].caption).values())


def test_counts_of_batches_add_up_to_the_accuracy_of_the_whole():
  exs = [shapes.generate(i, "train", seed=6, resolution=64) for i in range(12)]
  images = [e.image for e in exs]
  # Half the captions belong to other images, so some counts are below the totals.
  captions = [e.caption for e in exs[:6]] + [exs[(i + 1) % 12].caption for i in range(6, 12)]
  whole = compositional.evaluate(images, captions)
  parts = [compositional.count_correct(images[a:b], captions[a:b]) for a, b in ((0, 5), (5, 12))]
  summed = {k: parts[0][k] + parts[1][k] for k in parts[0]}
  assert summed["num_examples"] == 12 and 6 <= summed["overall"] < 12
  assert all(isinstance(v, int) for v in summed.values())
  assert compositional.accuracies(summed) == whole
  assert compositional.count_correct([], []) == dict.fromkeys(summed, 0)
  with pytest.raises(ValueError, match="no examples"):
    compositional.accuracies(compositional.count_correct([], []))


def test_evaluate_rejects_bad_input():
  ex = shapes.generate(0, "train", resolution=64)
  with pytest.raises(ValueError, match="images"):
    compositional.evaluate([ex.image], [ex.caption, ex.caption])
  with pytest.raises(grammar.CaptionParseError):
    compositional.evaluate([ex.image], ["a photo of a cat"])
  with pytest.raises(ValueError, match="HxWx3"):
    detector.detect_objects(np.zeros((8, 8), np.uint8))
  with pytest.raises(ValueError, match="uint8"):
    detector.detect_objects(ex.image / 255.0)
  report = compositional.format_report({"train": compositional.evaluate([ex.image], [ex.caption])})
  assert "100.0%" in report


def test_threads_read_the_same_results_in_the_same_order():
  """compositional.score_scenes on threads: each image's result, in the images' order, as the
  serial loop gives it (wrong-caption pairs included, so the results differ per image)."""
  examples = [shapes.generate(i, "train", 3, 64) for i in range(12)]
  images = [e.image for e in examples]
  scenes = [grammar.parse_caption(e.caption) for e in examples]
  scenes = scenes[:6] + scenes[7:] + scenes[6:7]  # half the pairs wrong
  serial = [detector.score_scene(im, sc) for im, sc in zip(images, scenes)]
  assert len({r["overall"] for r in serial}) == 2
  assert compositional.score_scenes(images, scenes, threads=4) == serial
  assert compositional.score_scenes(iter(images), scenes, threads=3) == serial
  assert compositional.score_scenes(images, scenes, threads=1) == serial
