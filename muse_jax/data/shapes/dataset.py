"""Synthetic shapes: procedurally drawn scenes with compositional captions.

The embedded default dataset. Every image is a plain light background with one or two *groups*
of flat-coloured shapes; every object in a group has the same colour and shape. The caption
states the count, colour and shape of each group and where the group is:

  one group:   "two red circles on the left", "a blue square in the center"
  two groups:  "two red circles above a blue square", "three green crosses to the left of a
               yellow triangle"

This module samples scenes per split and puts the pieces together: the grammar, captions and
reading rules are in grammar.py, object placement in layout.py, drawing in
render.py. The grammar names this module uses (`COLOURS`, `SHAPES`, `POSITIONS`,
`RELATIONS`, `MAX_COUNT`, `Group`, `Scene`, `scene_to_caption`) may also be used as
`shapes.<name>`; import anything else of the grammar from grammar.py.

Held-out split. The colour-shape pairs in `HELDOUT_PAIRS` (red triangle, green cross, blue circle,
yellow square) never appear in the `train` split, neither in images nor in captions. Every
`heldout` scene contains at least one of them, so accuracy on `heldout` measures compositional
generalisation: each held-out colour and each held-out shape is seen in training, only never
together.

Determinism. Example `index` of split `split` under `seed` draws everything from
`np.random.default_rng([seed, split_id, index])`: the same (seed, split, index) gives the same
scene, caption and pixels, at every resolution (one layout in normalised coordinates, drawn
natively at each resolution).

This module is numpy + PIL only: it must import where TensorFlow is not installed.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

from muse_jax.data.shapes.grammar import (COLOURS, MAX_COUNT, POSITIONS, RELATIONS, SHAPES, Group,
                                          Scene, scene_to_caption)
from muse_jax.data.shapes.layout import ShapeObject, layout_scene
from muse_jax.data.shapes.render import render

# Never in `train`; every `heldout` scene has at least one. One pair per shape, distinct colours,
# so each held-out colour and shape still appears in training with other partners.
HELDOUT_PAIRS = frozenset({
    ("red", "triangle"),
    ("green", "cross"),
    ("blue", "circle"),
    ("yellow", "square"),
})
SPLITS = ("train", "heldout")


@dataclasses.dataclass(frozen=True)
class ShapesExample:
  """`image` is uint8 HxWx3 for one resolution, or {resolution: image} for several."""
  id: str
  image: np.ndarray | dict[int, np.ndarray]
  caption: str
  scene: Scene
  objects: tuple[ShapeObject, ...]


# --- Scene sampling -------------------------------------------------------------------------


def pairs_for_split(split: str) -> list[tuple[str, str]]:
  """Colour-shape pairs a group may use in `split` ('heldout' lists only the held-out ones)."""
  all_pairs = [(c, s) for c in COLOURS for s in SHAPES]
  if split == "train":
    return [p for p in all_pairs if p not in HELDOUT_PAIRS]
  if split == "heldout":
    return sorted(HELDOUT_PAIRS)
  raise ValueError(f"unknown shapes split {split!r}; use one of {SPLITS}")


def _sample_scene(rng: np.random.Generator, split: str, max_count: int,
                  two_group_prob: float) -> Scene:
  train_pairs = pairs_for_split("train")
  all_pairs = [(c, s) for c in COLOURS for s in SHAPES]
  count = lambda: int(rng.integers(1, max_count + 1))
  if rng.random() >= two_group_prob:
    pool = train_pairs if split == "train" else pairs_for_split("heldout")
    pair = pool[rng.integers(len(pool))]
    return Scene((Group(count(), *pair),), position=POSITIONS[rng.integers(len(POSITIONS))])
  if split == "train":
    i, j = rng.choice(len(train_pairs), size=2, replace=False)
    pa, pb = train_pairs[i], train_pairs[j]
  else:
    held = pairs_for_split("heldout")
    pa = held[rng.integers(len(held))]
    others = [p for p in all_pairs if p != pa]
    pb = others[rng.integers(len(others))]
    if rng.random() < 0.5:
      pa, pb = pb, pa
  relation = RELATIONS[rng.integers(len(RELATIONS))]
  return Scene((Group(count(), *pa), Group(count(), *pb)), relation=relation)


# --- Dataset --------------------------------------------------------------------------------


def scene_options(section) -> dict:
  """The `generate` keywords that a config's `shapes` section sets: which scenes it draws."""
  return dict(max_count=int(section.max_count), two_group_prob=float(section.two_group_prob),
              object_scale=float(section.object_scale))


def generate(index: int, split: str = "train", seed: int = 0,
             resolution: int | Sequence[int] = 64, max_count: int = MAX_COUNT,
             two_group_prob: float = 0.5, object_scale: float = 1.0) -> ShapesExample:
  """Example `index` of `split`: same arguments, same scene, caption and pixels.

  With a sequence of resolutions, `image` is {resolution: image}, all of the same scene.
  `object_scale` draws the objects (and the gaps between them) that many times larger
  (layout.layout_scene); the scene and caption are those of scale 1.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown shapes split {split!r}; use one of {SPLITS}")
  if not 1 <= max_count <= MAX_COUNT:
    raise ValueError(f"max_count must be in [1, {MAX_COUNT}], got {max_count}")
  rng = np.random.default_rng([seed, SPLITS.index(split), index])
  scene = _sample_scene(rng, split, max_count, two_group_prob)
  objects = layout_scene(scene, rng, object_scale=object_scale)
  if isinstance(resolution, (int, np.integer)):
    image = render(objects, int(resolution))
  else:
    image = {int(r): render(objects, int(r)) for r in resolution}
  return ShapesExample(f"shapes-{split}-{seed}-{index}", image, scene_to_caption(scene),
                       scene, objects)


class ShapesDataset:
  """`num_examples` deterministic examples of one split; indexable and iterable.

  `shard(process_index, process_count)` iterates a disjoint slice (every process_count-th
  example starting at process_index).
  """

  def __init__(self, split: str = "train", num_examples: int = 10_000, seed: int = 0,
               resolution: int | Sequence[int] = 64, max_count: int = MAX_COUNT,
               two_group_prob: float = 0.5, object_scale: float = 1.0):
    if split not in SPLITS:
      raise ValueError(f"unknown shapes split {split!r}; use one of {SPLITS}")
    if num_examples < 0:
      raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    self.split, self.num_examples, self.seed = split, num_examples, seed
    self.resolution, self.max_count, self.two_group_prob = resolution, max_count, two_group_prob
    self.object_scale = object_scale

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> ShapesExample:
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range for {self.num_examples} examples")
    return generate(index, self.split, self.seed, self.resolution, self.max_count,
                    self.two_group_prob, self.object_scale)

  def __iter__(self) -> Iterator[ShapesExample]:
    return self.shard(0, 1)

  def shard(self, process_index: int, process_count: int) -> Iterator[ShapesExample]:
    for i in range(process_index, self.num_examples, process_count):
      yield self[i]
