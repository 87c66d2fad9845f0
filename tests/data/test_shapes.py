"""Shapes dataset: determinism, grammar, caption round trip, held-out split."""
import hashlib

import numpy as np
import pytest
from PIL import Image

from muse_jax.data.shapes import dataset as shapes, grammar, layout, render
from muse_jax.evaluation import detector


def test_same_seed_and_index_give_same_example():
  a = shapes.generate(7, "train", seed=3, resolution=64)
  b = shapes.generate(7, "train", seed=3, resolution=64)
  assert a.caption == b.caption and a.scene == b.scene and a.objects == b.objects
  np.testing.assert_array_equal(a.image, b.image)
  assert a.image.dtype == np.uint8 and a.image.shape == (64, 64, 3)
  others = [shapes.generate(7, "train", seed=s, resolution=64) for s in (4, 5, 6)]
  assert any(o.caption != a.caption for o in others)
  assert not np.array_equal(shapes.generate(8, "train", seed=3, resolution=64).image, a.image)


def test_resolutions_render_the_same_scene():
  multi = shapes.generate(11, "heldout", seed=0, resolution=(64, 256))
  single = shapes.generate(11, "heldout", seed=0, resolution=256)
  assert set(multi.image) == {64, 256}
  assert multi.image[64].shape == (64, 64, 3) and multi.image[256].shape == (256, 256, 3)
  np.testing.assert_array_equal(multi.image[256], single.image)
  assert multi.caption == single.caption


def test_rendered_objects_have_their_colour_at_their_centre():
  ex = shapes.generate(2, "train", seed=0, resolution=256)
  for o in ex.objects:
    # A cross, circle and square are solid at the box centre; a triangle at 2/3 down.
    y = o.cy + (o.size / 6 if o.shape == "triangle" else 0)
    px = ex.image[int(y * 256), int(o.cx * 256)]
    np.testing.assert_array_equal(px, grammar.COLOURS[o.colour])
  corner = ex.image[0, 0]
  np.testing.assert_array_equal(corner, grammar.BACKGROUND)


def test_caption_round_trip_and_layout_rules():
  ds = shapes.ShapesDataset("train", num_examples=300, seed=1, resolution=16)
  for ex in ds:
    assert grammar.parse_caption(ex.caption) == ex.scene
    assert grammar.scene_to_caption(ex.scene) == ex.caption
    counts = {g.pair: g.count for g in ex.scene.groups}
    seen = {}
    for o in ex.objects:
      seen[(o.colour, o.shape)] = seen.get((o.colour, o.shape), 0) + 1
      x0, y0, x1, y1 = o.box
      assert 0 <= x0 and 0 <= y0 and x1 <= 1 and y1 <= 1
    assert seen == counts
    for i, a in enumerate(ex.objects):
      for b in ex.objects[i + 1:]:
        assert layout._apart(a, b, layout.MIN_GAP), (ex.caption, a, b)
    means = [(np.mean([o.cx for o in ex.objects if (o.colour, o.shape) == g.pair]),
              np.mean([o.cy for o in ex.objects if (o.colour, o.shape) == g.pair]))
             for g in ex.scene.groups]
    if len(means) == 1:
      assert grammar.classify_position(*means[0]) == ex.scene.position
    else:
      assert grammar.classify_relation(*means) == ex.scene.relation


def test_grammar_is_covered_by_train():
  scenes = [ex.scene for ex in shapes.ShapesDataset("train", 400, seed=0, resolution=16)]
  groups = [g for s in scenes for g in s.groups]
  assert {g.colour for g in groups} == set(grammar.COLOURS)
  assert {g.shape for g in groups} == set(grammar.SHAPES)
  assert {g.count for g in groups} == {1, 2, 3, 4}
  assert {s.position for s in scenes} - {None} == set(grammar.POSITIONS)
  assert {s.relation for s in scenes} - {None} == set(grammar.RELATIONS)


def test_heldout_pairs_never_in_train_and_always_in_heldout():
  assert len(shapes.HELDOUT_PAIRS) == 4
  train = list(shapes.ShapesDataset("train", 1000, seed=5, resolution=16))
  held = list(shapes.ShapesDataset("heldout", 300, seed=5, resolution=16))
  for ex in train:
    assert not grammar.parse_caption(ex.caption).pairs() & shapes.HELDOUT_PAIRS, ex.caption
    assert not {(o.colour, o.shape) for o in ex.objects} & shapes.HELDOUT_PAIRS
  for ex in held:
    assert grammar.parse_caption(ex.caption).pairs() & shapes.HELDOUT_PAIRS, ex.caption
  assert not {e.caption for e in train} & {e.caption for e in held}
  # Every held-out colour and shape is still seen in training, just not together.
  train_pairs = {p for ex in train for p in ex.scene.pairs()}
  for colour, shape in shapes.HELDOUT_PAIRS:
    assert any(c == colour for c, _ in train_pairs) and any(s == shape for _, s in train_pairs)
  assert set(shapes.pairs_for_split("train")) == train_pairs


def test_parse_caption_synonyms_and_errors():
  s = grammar.parse_caption("  Two RED circles,  to the LEFT of an purple cross. ")
  assert s == grammar.Scene(
      (grammar.Group(2, "red", "circle"), grammar.Group(1, "purple", "cross")), relation="left of")
  assert grammar.parse_caption("2 blue squares left of one green cross").relation == "left of"
  assert grammar.parse_caption("a yellow triangle in the middle").position == "center"
  assert grammar.parse_caption("three green crosses at the top") == grammar.Scene(
      (grammar.Group(3, "green", "cross"),), position="top")
  for bad in ["a red circles on the left", "two red circle on the left", "five red circles above",
              "a pink circle on the left", "a red circle", "a red circle above a red circle",
              "a photo of a dog", ""]:
    with pytest.raises(grammar.CaptionParseError):
      grammar.parse_caption(bad)


def test_layouts_are_the_datasets_own():
  """Layouts drawn from blocks of doubles equal those of the scalar `rng.uniform` draws the
  dataset was defined with (the digest was taken with them), and leave `rng` where they did:
  a change here changes every scene of the benchmark."""
  digest = hashlib.sha256()
  for split in shapes.SPLITS:
    for max_count, two_group_prob in ((4, 0.5), (2, 1.0), (1, 0.0)):
      for i in range(300):
        rng = np.random.default_rng([7, shapes.SPLITS.index(split), i])
        scene = shapes._sample_scene(rng, split, max_count, two_group_prob)
        digest.update(repr((layout.layout_scene(scene, rng), rng.random())).encode())
  assert digest.hexdigest() == (
      "00588fd374947849710d9f57def36fe50f051f9b7d702dfc3a058b5b38f642bb")


def test_object_scale_draws_the_same_scene_larger_and_still_apart():
  ratios = []
  for i in range(60):
    kw = dict(max_count=2, two_group_prob=0.3)
    ex = shapes.generate(i, shapes.SPLITS[i % 2], 3, 64, **kw)
    big = shapes.generate(i, shapes.SPLITS[i % 2], 3, 64, object_scale=1.5, **kw)
    assert big.scene == ex.scene and big.caption == ex.caption
    assert all(layout._apart(a, b, layout.MIN_GAP * 1.5)
               for j, a in enumerate(big.objects) for b in big.objects[j + 1:])
    assert all(0 <= v <= 1 for o in big.objects for v in o.box)
    ratios.append(np.mean([o.size for o in big.objects]) / np.mean([o.size for o in ex.objects]))
    assert detector.score(big.image, big.caption)["overall"]
  # Sizes are drawn anew (and shrink in crowded scenes), so the ratio varies around the scale.
  assert np.median(ratios) > 1.4 and min(ratios) > 1.0
  with pytest.raises(ValueError, match="object_scale"):
    shapes.generate(0, "train", object_scale=0.0)


def test_block_uniforms_equal_scalar_draws_across_blocks():
  rng, ref = np.random.default_rng(3), np.random.default_rng(3)
  u = layout._Uniforms(rng)
  bounds = [(0.1 * k, 0.2 + 0.3 * k) for k in range(3 * layout._Uniforms._BLOCK + 5)]
  assert [u.uniform(a, b) for a, b in bounds] == [ref.uniform(a, b) for a, b in bounds]
  u.sync()
  assert rng.bit_generator.state == ref.bit_generator.state
  assert rng.integers(1 << 30) == ref.integers(1 << 30)


def test_render_equals_pillow_box_resize_of_the_supersampled_canvas():
  for i in range(12):
    ex = shapes.generate(i, shapes.SPLITS[i % 2], seed=1, resolution=16)
    for res in (16, 32, 64, 160):
      ss = render.supersample(res)
      canvas = render.supersampled_canvas(ex.objects, res * ss)
      expected = np.asarray(canvas.resize((res, res), Image.Resampling.BOX))
      np.testing.assert_array_equal(render.render(ex.objects, res), expected)


def test_sharding_is_disjoint_and_complete():
  ds = shapes.ShapesDataset("train", 10, seed=0, resolution=16)
  ids = [[e.id for e in ds.shard(i, 3)] for i in range(3)]
  flat = sum(ids, [])
  assert len(flat) == len(set(flat)) == 10
  assert sorted(flat) == sorted(e.id for e in ds)


def test_invalid_arguments():
  with pytest.raises(ValueError, match="split"):
    shapes.generate(0, "test")
  with pytest.raises(ValueError, match="max_count"):
    shapes.generate(0, "train", max_count=5)
  with pytest.raises(IndexError):
    shapes.ShapesDataset("train", 3)[3]


def test_shapes_detector_and_sources_import_without_tensorflow():
  import subprocess
  import sys
  code = ("import sys; sys.modules['tensorflow'] = None; "
          "import muse_jax.data.shapes.dataset, muse_jax.data.raw_sources; "
          "import muse_jax.data.preprocess; "
          "import muse_jax.evaluation.compositional; from muse_jax.configs import common_data; "
          "c = common_data.data_config(); c.resolutions = (32,); c.shapes.num_train = 2; "
          "assert len(list(muse_jax.data.raw_sources.iterate_examples(c))) == 2")
  root = __file__.rsplit("/tests/", 1)[0]
  subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
