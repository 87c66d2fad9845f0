"""The shapes grammar: vocabulary, scenes, captions and the reading rules.

What a shapes caption can say, how a `Scene` is written as its one canonical caption and parsed
back, and the rules that turn object centres into position and relation words. The generator
(dataset.py, layout.py) and the detector (muse_jax/evaluation/detector.py) both follow
these rules, so a generated caption is always read back from its image.

Grammar (small enough for a tiny model, yet compositional):
  count     1-4 (`a`, `two`, `three`, `four`)
  colour    red, green, blue, yellow, purple (`COLOURS`, well separated in RGB)
  shape     circle, square, triangle, cross (`SHAPES`; upright, square bounding box)
  position  left, right, top, bottom, center (one group; from the mean of the object centres)
  relation  above, below, left of, right of (two groups; between the two groups' mean centres)

This module is standard library only: it must import where TensorFlow is not installed.
"""
from __future__ import annotations

import dataclasses
import re

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

# Reading rules shared with the detector (normalised image coordinates, y downwards).
CENTER_RADIUS = 0.12  # a group whose mean centre is within this (Chebyshev) of 0.5 is "center"
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

