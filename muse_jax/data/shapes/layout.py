"""Layout of a shapes scene: where each object goes, so the caption is true of the image.

Layouts are in normalised image coordinates (y downwards), so one layout renders at every
resolution. They are checked against the same reading rules the detector uses
(`grammar.classify_position`, `classify_relation`), with a margin, so a caption is always
true of its image. Objects never touch (a gap of at least `MIN_GAP` of the image side).
`object_scale` draws objects, and the gaps between them, that many times larger: a scene
whose shapes must stay legible at a small resolution (the CPU demo's 32 px base stage).

This module is numpy only: it must import where TensorFlow is not installed.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from muse_jax.data.shapes.grammar import CENTER_RADIUS, Group, Scene, validate_scene

LAYOUT_MARGIN = 0.05  # generated layouts clear every decision boundary by at least this
MIN_GAP = 0.05  # minimum gap between object bounding boxes


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


class _Uniforms:
  """`rng.uniform(low, high)` for scalars, from doubles drawn in blocks.

  Layout draws a hundred or so scalars per scene, mostly in a rejection loop, and one scalar
  `Generator.uniform` call costs more than drawing a block. Values are bit-identical to
  `rng.uniform` (numpy computes `low + (high - low) * next_double`, and `rng.random(n)` gives
  the same doubles as n scalar draws); `sync()` leaves `rng` exactly where the scalar calls
  would have, so a layout is the same as the one drawn one scalar at a time. Needs a bit
  generator with `advance` (PCG64, the one `np.random.default_rng` makes).
  """

  _BLOCK = 128

  def __init__(self, rng: np.random.Generator):
    self.rng = rng
    self._state = rng.bit_generator.state
    self._block = rng.random(self._BLOCK).tolist()
    self._next = 0

  def uniform(self, low: float, high: float) -> float:
    if self._next == len(self._block):
      self._state = self.rng.bit_generator.state
      self._block = self.rng.random(self._BLOCK).tolist()
      self._next = 0
    d = self._block[self._next]
    self._next += 1
    return low + (high - low) * d

  def sync(self) -> None:
    """Rewind `rng` to just after the doubles used so far."""
    bg = self.rng.bit_generator
    bg.state = self._state
    bg.advance(self._next)
    self._block, self._next = [], 0
    self._state = bg.state


def _place_group(u: _Uniforms, group: Group, region, size_range, target, placed,
                 gap: float) -> list[ShapeObject] | None:
  """Scatter `group` inside `region` without touching `placed`, then shift toward `target`."""
  x0, y0, x1, y1 = region
  # Boxes as (x0, y0, x1, y1) tuples, computed as ShapeObject.box does: the rejection loop is
  # the hot path of scene generation.
  others = [o.box for o in placed]  # boxes to stay apart from, this group's included
  boxes: list[tuple[float, float, float, float]] = []
  objs: list[ShapeObject] = []
  for _ in range(group.count):
    size = u.uniform(*size_range)
    h = size / 2
    if x1 - x0 < size or y1 - y0 < size:
      return None
    for _ in range(100):
      cx, cy = u.uniform(x0 + h, x1 - h), u.uniform(y0 + h, y1 - h)
      box = (cx - h, cy - h, cx + h, cy + h)
      if not any(_touch(box, b, gap) for b in others):
        objs.append(ShapeObject(group.colour, group.shape, cx, cy, size))
        boxes.append(box)
        others.append(box)
        break
    else:
      return None
  # Shift the whole group toward the target mean centre, keeping it inside the region.
  mx = float(np.mean([o.cx for o in objs]))
  my = float(np.mean([o.cy for o in objs]))
  tx, ty = u.uniform(*target[0]), u.uniform(*target[1])
  lo_x = x0 - min(b[0] for b in boxes)
  hi_x = x1 - max(b[2] for b in boxes)
  lo_y = y0 - min(b[1] for b in boxes)
  hi_y = y1 - max(b[3] for b in boxes)
  sx = float(np.clip(tx - mx, lo_x, hi_x))
  sy = float(np.clip(ty - my, lo_y, hi_y))
  shifted = [dataclasses.replace(o, cx=o.cx + sx, cy=o.cy + sy) for o in objs]
  if not all(_apart(a, b, gap) for a in shifted for b in placed):
    return None
  return shifted


def _touch(a, b, gap: float) -> bool:
  """Boxes (x0, y0, x1, y1) closer than `gap` on both axes."""
  return (a[2] + gap > b[0] and b[2] + gap > a[0] and
          a[3] + gap > b[1] and b[3] + gap > a[1])


def _apart(a: ShapeObject, b: ShapeObject, gap: float) -> bool:
  return not _touch(a.box, b.box, gap)


def _mean_centre(objs: Sequence[ShapeObject]) -> tuple[float, float]:
  return (float(np.mean([o.cx for o in objs])), float(np.mean([o.cy for o in objs])))


def layout_scene(scene: Scene, rng: np.random.Generator, max_tries: int = 200,
                 object_scale: float = 1.0) -> tuple[ShapeObject, ...]:
  """Object placements for `scene` whose reading (position/relation) is clear by a margin.

  Draws from `rng` as scalar `rng.uniform` calls would, leaving it in the same state. Objects
  and gaps are `object_scale` times the default; objects shrink on repeated failures, so a
  large scale still lays out crowded scenes, only more slowly.
  """
  if not object_scale > 0:
    raise ValueError(f"object_scale must be > 0, got {object_scale}")
  validate_scene(scene)
  u = _Uniforms(rng)
  try:
    return _layout(scene, u, max_tries, object_scale)
  finally:
    u.sync()


def _layout(scene: Scene, u: _Uniforms, max_tries: int,
            object_scale: float) -> tuple[ShapeObject, ...]:
  lo, hi = (v * object_scale for v in _size_range(scene.num_objects))
  gap = MIN_GAP * object_scale
  for attempt in range(max_tries):
    # Shrink objects a little on repeated failures so crowded scenes always fit.
    shrink = 1.0 - 0.3 * attempt / max_tries
    size_range = (lo * shrink, hi * shrink)
    if len(scene.groups) == 1:
      region, target = _SINGLE_REGIONS[scene.position]
      objs = _place_group(u, scene.groups[0], region, size_range, target, [], gap)
      if objs and _position_clear(*_mean_centre(objs), scene.position, LAYOUT_MARGIN):
        return tuple(objs)
      continue
    half_a, half_b = _RELATION_HALVES[scene.relation]
    vertical = scene.relation in ("above", "below")
    jitter = u.uniform(0.4, 0.6)
    targets = []
    for half in (half_a, half_b):
      along = {"top": (0.2, 0.3), "bottom": (0.7, 0.8), "left": (0.2, 0.3),
               "right": (0.7, 0.8)}[half]
      across = (jitter - 0.08, jitter + 0.08)
      targets.append((across, along) if vertical else (along, across))
    objs_a = _place_group(u, scene.groups[0], _HALVES[half_a], size_range, targets[0], [],
                          gap)
    if not objs_a:
      continue
    objs_b = _place_group(u, scene.groups[1], _HALVES[half_b], size_range, targets[1], objs_a,
                          gap)
    if not objs_b:
      continue
    if _relation_clear(_mean_centre(objs_a), _mean_centre(objs_b), scene.relation,
                       LAYOUT_MARGIN):
      return tuple(objs_a + objs_b)
  raise RuntimeError(f"could not lay out {scene} in {max_tries} tries")
