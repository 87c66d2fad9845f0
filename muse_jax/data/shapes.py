"""Synthetic shapes: procedurally drawn scenes with compositional captions.

The embedded default dataset. Every image is a plain light background with one or two *groups*
of flat-coloured shapes; every object in a group has the same colour and shape. The caption
states the count, colour and shape of each group and where the group is:

  one group:   "two red circles on the left", "a blue square in the center"
  two groups:  "two red circles above a blue square", "three green crosses to the left of a
               yellow triangle"

Grammar (small enough for a tiny model, yet compositional):
  count     1-4 (`a`, `two`, `three`, `four`)
  colour    red, green, blue, yellow, purple (`COLOURS`, well separated in RGB)
  shape     circle, square, triangle, cross (`SHAPES`; upright, square bounding box)
  position  left, right, top, bottom, center (one group; from the mean of the object centres)
  relation  above, below, left of, right of (two groups; between the two groups' mean centres)

Held-out split. The colour-shape pairs in `HELDOUT_PAIRS` (red triangle, green cross, blue circle,
yellow square) never appear in the `train` split, neither in images nor in captions. Every
`heldout` scene contains at least one of them, so accuracy on `heldout` measures compositional
generalisation: each held-out colour and each held-out shape is seen in training, only never
together.

Determinism. Example `index` of split `split` under `seed` draws everything from
`np.random.default_rng([seed, split_id, index])`: the same (seed, split, index) gives the same
scene, caption and pixels, at every resolution (layouts are in normalised coordinates and are
rendered natively, with 4x or 2x supersampling for anti-aliasing).

Layouts are checked against the same reading rules the detector uses
(`classify_position`, `classify_relation`), with a margin, so a caption is always true of its
image. Objects never touch (a gap of at least `MIN_GAP` of the image side).

This module is numpy + PIL only: it must import where TensorFlow is not installed.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

# Object colours (RGB). Pairwise distances are >= 120, and every colour has chroma >= 140 while
# the background is grey (chroma 0), so colour survives blur and anti-aliasing.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 70, 225),
    "yellow": (235, 205, 20),
    "purple": (150, 40, 200),
}
BACKGROUND = (240, 240, 240)
SHAPES = ("circle", "square", "triangle", "cross")
POSITIONS = ("left", "right", "top", "bottom", "center")
RELATIONS = ("above", "below", "left of", "right of")
MAX_COUNT = 4
# Never in `train`; every `heldout` scene has at least one. One pair per shape, distinct colours,
# so each held-out colour and shape still appears in training with other partners.
HELDOUT_PAIRS = frozenset({
    ("red", "triangle"),
    ("green", "cross"),
    ("blue", "circle"),
    ("yellow", "square"),
})
SPLITS = ("train", "heldout")

# Reading rules shared with the detector (normalised image coordinates, y downwards).
CENTER_RADIUS = 0.12  # a group whose mean centre is within this (Chebyshev) of 0.5 is "center"
LAYOUT_MARGIN = 0.05  # generated layouts clear every decision boundary by at least this
MIN_GAP = 0.05  # minimum gap between object bounding boxes
CROSS_ARM = 1.0 / 3.0  # arm thickness of a cross, as a fraction of its size

_COUNT_WORDS = {1: "a", 2: "two", 3: "three", 4: "four"}
_WORD_COUNTS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4,
                "1": 1, "2": 2, "3": 3, "4": 4}
_POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top",
                     "bottom": "at the bottom", "center": "in the center"}
_RELATION_PHRASES = {"above": "above", "below": "below", "left of": "to the left of",
                     "right of": "to the right of"}
_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
_SINGULARS = {v: k for k, v in _PLURALS.items()}


class CaptionParseError(ValueError):
  """A caption that is not in the shapes grammar."""


@dataclasses.dataclass(frozen=True)
class Group:
  """`count` objects that share one colour and one shape."""
  count: int
  colour: str
  shape: str

  @property
  def pair(self) -> tuple[str, str]:
    return (self.colour, self.shape)


@dataclasses.dataclass(frozen=True)
class Scene:
  """What a caption says: one group with a `position`, or two groups with a `relation`.

  For two groups the caption reads "groups[0] <relation> groups[1]".
  """
  groups: tuple[Group, ...]
  position: str | None = None
  relation: str | None = None

  def canonical(self) -> Scene:
    """Same meaning, one spelling: 'below'/'right of' become 'above'/'left of' (groups swapped)."""
    if len(self.groups) == 2 and self.relation in ("below", "right of"):
      flipped = {"below": "above", "right of": "left of"}[self.relation]
      return Scene((self.groups[1], self.groups[0]), None, flipped)
    return self

  def pairs(self) -> set[tuple[str, str]]:
    return {g.pair for g in self.groups}

  @property
  def num_objects(self) -> int:
    return sum(g.count for g in self.groups)


@dataclasses.dataclass(frozen=True)
class ShapeObject:
  """One drawn object; `cx`, `cy` (bounding-box centre) and `size` are fractions of the side."""
  colour: str
  shape: str
  cx: float
  cy: float
  size: float

  @property
  def box(self) -> tuple[float, float, float, float]:
    h = self.size / 2
    return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)


@dataclasses.dataclass(frozen=True)
class ShapesExample:
  """`image` is uint8 HxWx3 for one resolution, or {resolution: image} for several."""
  id: str
  image: np.ndarray | dict[int, np.ndarray]
  caption: str
  scene: Scene
  objects: tuple[ShapeObject, ...]


# --- Captions -------------------------------------------------------------------------------


def _group_phrase(g: Group) -> str:
  noun = g.shape if g.count == 1 else _PLURALS[g.shape]
  return f"{_COUNT_WORDS[g.count]} {g.colour} {noun}"


def scene_to_caption(scene: Scene) -> str:
  """The one canonical caption of a scene (inverse of `parse_caption`)."""
  validate_scene(scene)
  if len(scene.groups) == 1:
    return f"{_group_phrase(scene.groups[0])} {_POSITION_PHRASES[scene.position]}"
  a, b = scene.groups
  return f"{_group_phrase(a)} {_RELATION_PHRASES[scene.relation]} {_group_phrase(b)}"


def validate_scene(scene: Scene) -> None:
  """Raise ValueError unless `scene` is in the grammar."""
  if len(scene.groups) not in (1, 2):
    raise ValueError(f"a scene has 1 or 2 groups, got {len(scene.groups)}")
  for g in scene.groups:
    if g.colour not in COLOURS or g.shape not in SHAPES or not 1 <= g.count <= MAX_COUNT:
      raise ValueError(f"group out of grammar: {g}")
  if len(scene.groups) == 1:
    if scene.position not in POSITIONS or scene.relation is not None:
      raise ValueError(f"one group needs a position in {POSITIONS}: {scene}")
  else:
    if scene.relation not in RELATIONS or scene.position is not None:
      raise ValueError(f"two groups need a relation in {RELATIONS}: {scene}")
    if scene.groups[0].pair == scene.groups[1].pair:
      raise ValueError(f"the two groups must differ in colour or shape: {scene}")


_GROUP_RE = (r"(a|an|one|two|three|four|[1-4])\s+(" + "|".join(COLOURS) + r")\s+("
             + "|".join(list(SHAPES) + list(_PLURALS.values())) + r")")
_POSITION_RE = {
    "left": r"(?:on|at|in) the left(?: side)?",
    "right": r"(?:on|at|in) the right(?: side)?",
    "top": r"(?:at|on|in) the top",
    "bottom": r"(?:at|on|in) the bottom",
    "center": r"(?:in|at) the (?:center|centre|middle)",
}
_RELATION_RE = {
    "above": r"above",
    "below": r"below",
    "left of": r"(?:to the )?left of",
    "right of": r"(?:to the )?right of",
}


def _parse_group(m: re.Match, offset: int) -> Group:
  count = _WORD_COUNTS[m.group(offset)]
  colour, noun = m.group(offset + 1), m.group(offset + 2)
  plural = noun in _SINGULARS
  if plural != (count > 1):
    raise CaptionParseError(f"count and noun disagree: {m.group(0)!r}")
  return Group(count, colour, _SINGULARS.get(noun, noun))


def parse_caption(caption: str) -> Scene:
  """Parse a caption of the shapes grammar back into its `Scene`.

  Case, surrounding punctuation and extra whitespace are ignored; a few synonyms are accepted
  ("one"/"an", digits, "centre"/"middle", "left of" without "to the").
  Raises CaptionParseError for anything else.
  """
  text = " ".join(re.sub(r"[.,;!]+", " ", caption.lower()).split())
  for pos, pattern in _POSITION_RE.items():
    m = re.fullmatch(_GROUP_RE + r"\s+" + pattern, text)
    if m:
      return Scene((_parse_group(m, 1),), position=pos)
  for rel, pattern in _RELATION_RE.items():
    m = re.fullmatch(_GROUP_RE + r"\s+" + pattern + r"\s+" + _GROUP_RE, text)
    if m:
      scene = Scene((_parse_group(m, 1), _parse_group(m, 4)), relation=rel)
      if scene.groups[0].pair == scene.groups[1].pair:
        raise CaptionParseError(f"the two groups must differ in colour or shape: {caption!r}")
      return scene
  raise CaptionParseError(f"not a shapes caption: {caption!r}")


# --- Reading rules (shared with the detector) -----------------------------------------------


def classify_position(cx: float, cy: float) -> str:
  """Position word for a group whose mean object centre is (cx, cy)."""
  dx, dy = cx - 0.5, cy - 0.5
  if max(abs(dx), abs(dy)) < CENTER_RADIUS:
    return "center"
  if abs(dx) >= abs(dy):
    return "left" if dx < 0 else "right"
  return "top" if dy < 0 else "bottom"


def classify_relation(a: tuple[float, float], b: tuple[float, float]) -> str:
  """Relation word R in "A R B" for groups with mean centres `a` and `b`."""
  dx, dy = b[0] - a[0], b[1] - a[1]
  if abs(dy) > abs(dx):
    return "above" if dy > 0 else "below"
  return "left of" if dx > 0 else "right of"


def _position_clear(cx: float, cy: float, position: str, margin: float) -> bool:
  dx, dy = cx - 0.5, cy - 0.5
  cheb = max(abs(dx), abs(dy))
  if position == "center":
    return cheb <= CENTER_RADIUS - margin
  if cheb < CENTER_RADIUS + margin:
    return False
  along = {"left": -dx, "right": dx, "top": -dy, "bottom": dy}[position]
  across = abs(dy) if position in ("left", "right") else abs(dx)
  return along > 0 and along >= across + margin


def _relation_clear(a, b, relation: str, margin: float) -> bool:
  dx, dy = b[0] - a[0], b[1] - a[1]
  along = {"above": dy, "below": -dy, "left of": dx, "right of": -dx}[relation]
  across = abs(dx) if relation in ("above", "below") else abs(dy)
  return along >= across + margin


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


def _size_range(num_objects: int) -> tuple[float, float]:
  if num_objects == 1:
    return (0.22, 0.32)
  if num_objects == 2:
    return (0.18, 0.26)
  if num_objects <= 4:
    return (0.15, 0.22)
  return (0.14, 0.18)


# Region (x0, y0, x1, y1) a group's boxes must stay inside, and its target mean centre range.
_SINGLE_REGIONS = {
    "left": ((0.03, 0.1, 0.47, 0.9), ((0.2, 0.3), (0.45, 0.55))),
    "right": ((0.53, 0.1, 0.97, 0.9), ((0.7, 0.8), (0.45, 0.55))),
    "top": ((0.1, 0.03, 0.9, 0.47), ((0.45, 0.55), (0.2, 0.3))),
    "bottom": ((0.1, 0.53, 0.9, 0.97), ((0.45, 0.55), (0.7, 0.8))),
    "center": ((0.15, 0.15, 0.85, 0.85), ((0.48, 0.52), (0.48, 0.52))),
}
_HALVES = {"top": (0.03, 0.03, 0.97, 0.47), "bottom": (0.03, 0.53, 0.97, 0.97),
           "left": (0.03, 0.03, 0.47, 0.97), "right": (0.53, 0.03, 0.97, 0.97)}
_RELATION_HALVES = {"above": ("top", "bottom"), "below": ("bottom", "top"),
                    "left of": ("left", "right"), "right of": ("right", "left")}


def _place_group(rng, group: Group, region, size_range, target, placed) -> list[ShapeObject] | None:
  """Scatter `group` inside `region` without touching `placed`, then shift toward `target`."""
  x0, y0, x1, y1 = region
  objs: list[ShapeObject] = []
  for _ in range(group.count):
    size = float(rng.uniform(*size_range))
    h = size / 2
    if x1 - x0 < size or y1 - y0 < size:
      return None
    for _ in range(100):
      cx, cy = float(rng.uniform(x0 + h, x1 - h)), float(rng.uniform(y0 + h, y1 - h))
      cand = ShapeObject(group.colour, group.shape, cx, cy, size)
      if all(_apart(cand, o) for o in objs + placed):
        objs.append(cand)
        break
    else:
      return None
  # Shift the whole group toward the target mean centre, keeping it inside the region.
  mx = float(np.mean([o.cx for o in objs]))
  my = float(np.mean([o.cy for o in objs]))
  tx, ty = float(rng.uniform(*target[0])), float(rng.uniform(*target[1]))
  lo_x = x0 - min(o.box[0] for o in objs)
  hi_x = x1 - max(o.box[2] for o in objs)
  lo_y = y0 - min(o.box[1] for o in objs)
  hi_y = y1 - max(o.box[3] for o in objs)
  sx = float(np.clip(tx - mx, lo_x, hi_x))
  sy = float(np.clip(ty - my, lo_y, hi_y))
  shifted = [dataclasses.replace(o, cx=o.cx + sx, cy=o.cy + sy) for o in objs]
  if not all(_apart(a, b) for a in shifted for b in placed):
    return None
  return shifted


def _apart(a: ShapeObject, b: ShapeObject) -> bool:
  ax0, ay0, ax1, ay1 = a.box
  bx0, by0, bx1, by1 = b.box
  return (ax1 + MIN_GAP <= bx0 or bx1 + MIN_GAP <= ax0 or
          ay1 + MIN_GAP <= by0 or by1 + MIN_GAP <= ay0)


def _mean_centre(objs: Sequence[ShapeObject]) -> tuple[float, float]:
  return (float(np.mean([o.cx for o in objs])), float(np.mean([o.cy for o in objs])))


def layout_scene(scene: Scene, rng: np.random.Generator,
                 max_tries: int = 200) -> tuple[ShapeObject, ...]:
  """Object placements for `scene` whose reading (position/relation) is clear by a margin."""
  validate_scene(scene)
  lo, hi = _size_range(scene.num_objects)
  for attempt in range(max_tries):
    # Shrink objects a little on repeated failures so crowded scenes always fit.
    shrink = 1.0 - 0.3 * attempt / max_tries
    size_range = (lo * shrink, hi * shrink)
    if len(scene.groups) == 1:
      region, target = _SINGLE_REGIONS[scene.position]
      objs = _place_group(rng, scene.groups[0], region, size_range, target, [])
      if objs and _position_clear(*_mean_centre(objs), scene.position, LAYOUT_MARGIN):
        return tuple(objs)
      continue
    half_a, half_b = _RELATION_HALVES[scene.relation]
    vertical = scene.relation in ("above", "below")
    jitter = float(rng.uniform(0.4, 0.6))
    targets = []
    for half in (half_a, half_b):
      along = {"top": (0.2, 0.3), "bottom": (0.7, 0.8), "left": (0.2, 0.3),
               "right": (0.7, 0.8)}[half]
      across = (jitter - 0.08, jitter + 0.08)
      targets.append((across, along) if vertical else (along, across))
    objs_a = _place_group(rng, scene.groups[0], _HALVES[half_a], size_range, targets[0], [])
    if not objs_a:
      continue
    objs_b = _place_group(rng, scene.groups[1], _HALVES[half_b], size_range, targets[1], objs_a)
    if not objs_b:
      continue
    if _relation_clear(_mean_centre(objs_a), _mean_centre(objs_b), scene.relation,
                       LAYOUT_MARGIN):
      return tuple(objs_a + objs_b)
  raise RuntimeError(f"could not lay out {scene} in {max_tries} tries")


# --- Rendering ------------------------------------------------------------------------------


def _supersample(resolution: int) -> int:
  return 4 if resolution <= 128 else 2


def render(objects: Sequence[ShapeObject], resolution: int) -> np.ndarray:
  """Draw `objects` at `resolution` x `resolution`; uint8 HxWx3, anti-aliased."""
  if resolution < 16:
    raise ValueError(f"shapes resolution must be >= 16, got {resolution}")
  ss = _supersample(resolution)
  side = resolution * ss
  img = Image.new("RGB", (side, side), BACKGROUND)
  draw = ImageDraw.Draw(img)
  for o in objects:
    fill = COLOURS[o.colour]
    x0, y0, x1, y1 = (v * side for v in o.box)
    if o.shape == "circle":
      draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif o.shape == "square":
      draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif o.shape == "triangle":
      draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    elif o.shape == "cross":
      arm = (x1 - x0) * CROSS_ARM / 2
      xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
      draw.rectangle((xm - arm, y0, xm + arm - 1, y1 - 1), fill=fill)
      draw.rectangle((x0, ym - arm, x1 - 1, ym + arm - 1), fill=fill)
    else:
      raise ValueError(f"unknown shape {o.shape!r}")
  img = img.resize((resolution, resolution), Image.Resampling.BOX)
  return np.asarray(img, dtype=np.uint8)


# --- Dataset --------------------------------------------------------------------------------


def generate(index: int, split: str = "train", seed: int = 0,
             resolution: int | Sequence[int] = 64, max_count: int = MAX_COUNT,
             two_group_prob: float = 0.5) -> ShapesExample:
  """Example `index` of `split`: same arguments, same scene, caption and pixels.

  With a sequence of resolutions, `image` is {resolution: image}, all of the same scene.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown shapes split {split!r}; use one of {SPLITS}")
  if not 1 <= max_count <= MAX_COUNT:
    raise ValueError(f"max_count must be in [1, {MAX_COUNT}], got {max_count}")
  rng = np.random.default_rng([seed, SPLITS.index(split), index])
  scene = _sample_scene(rng, split, max_count, two_group_prob)
  objects = layout_scene(scene, rng)
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
               two_group_prob: float = 0.5):
    if split not in SPLITS:
      raise ValueError(f"unknown shapes split {split!r}; use one of {SPLITS}")
    if num_examples < 0:
      raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    self.split, self.num_examples, self.seed = split, num_examples, seed
    self.resolution, self.max_count, self.two_group_prob = resolution, max_count, two_group_prob

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> ShapesExample:
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range for {self.num_examples} examples")
    return generate(index, self.split, self.seed, self.resolution, self.max_count,
                    self.two_group_prob)

  def __iter__(self) -> Iterator[ShapesExample]:
    return self.shard(0, 1)

  def shard(self, process_index: int, process_count: int) -> Iterator[ShapesExample]:
    for i in range(process_index, self.num_examples, process_count):
      yield self[i]
