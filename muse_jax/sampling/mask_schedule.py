"""Masking schedules for MaskGIT/Muse parallel decoding.

A schedule maps decoding progress `r` in [0, 1] (the fraction of decoding steps done) to the
fraction of the unknown tokens that are still masked. Every schedule here starts at 1 (all
masked) for r = 0 and falls to 0 at r = 1; `mask_ratio` clips the result to
[MIN_MASK_RATIO, 1] as MaskGIT does, so the ratio is never exactly zero.

Muse (Sec. 2.8) decodes with the cosine schedule: 24 steps for the base model and 8 for
super-resolution.

Names accepted by `get` / `mask_ratio`:
  cosine            cos(pi/2 * r)               (Muse and MaskGIT default)
  linear, uniform   1 - r
  square            1 - r^2
  cubic             1 - r^3
  pow<p>            1 - r^p, e.g. 'pow2.5'      (p > 0)
  sqrt              1 - sqrt(r)
  log               1 - log2(1 + r)             (reveals many tokens early)
  exp               2 - 2^r                     (reveals few tokens early)

`log` and `exp` share MaskGIT's names but not its formulas: MaskGIT's `log` is
-log2(r) / log2(N) and its `exp` is 1 - exp2(-log2(N) (1 - r)), both depending on the token
count N. Here both are fixed curves from 1 to 0 that need no N. `cosine`, `uniform` and
`pow<p>` are MaskGIT's schedules of those names.

`num_masked_after_steps` turns a schedule into integer counts: how many of the N unknown tokens
are still masked after each step. The counts reveal at least one token per step while any remain
and reveal everything by the last step.
"""
from __future__ import annotations

import math
from typing import Callable, Union

import jax
import jax.numpy as jnp

MIN_MASK_RATIO = 1e-6

# Products ratio * N within this distance below an integer count as that integer, so that
# float32 rounding (e.g. (1 - 1/3) * 3 = 1.9999999) cannot drop a token from a count.
_COUNT_EPS = 1e-4

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def cosine(progress):
  """cos(pi/2 * r): slow at first, fast at the end (Muse's schedule)."""
  return jnp.cos(jnp.asarray(progress, jnp.float32) * (math.pi / 2))


def linear(progress):
  """1 - r: the same number of tokens revealed at every step."""
  return 1.0 - jnp.asarray(progress, jnp.float32)


def power(exponent: float) -> Schedule:
  """Returns the schedule 1 - r**exponent (exponent > 0)."""
  if not exponent > 0:
    raise ValueError(f"mask schedule pow{exponent}: the exponent must be > 0")

  def schedule(progress):
    return 1.0 - jnp.power(jnp.asarray(progress, jnp.float32), exponent)

  schedule.__name__ = f"pow{exponent:g}"
  return schedule


def square(progress):
  """1 - r^2."""
  return power(2.0)(progress)


def cubic(progress):
  """1 - r^3."""
  return power(3.0)(progress)


def sqrt(progress):
  """1 - sqrt(r)."""
  return 1.0 - jnp.sqrt(jnp.asarray(progress, jnp.float32))


def log(progress):
  """1 - log2(1 + r): concave, reveals many tokens in the first steps."""
  return 1.0 - jnp.log2(1.0 + jnp.asarray(progress, jnp.float32))


def exp(progress):
  """2 - 2^r: convex, reveals few tokens in the first steps."""
  return 2.0 - jnp.exp2(jnp.asarray(progress, jnp.float32))


_SCHEDULES = {
    "cosine": cosine,
    "linear": linear,
    "uniform": linear,
    "square": square,
    "cubic": cubic,
    "sqrt": sqrt,
    "log": log,
    "exp": exp,
}

NAMES = tuple(sorted(_SCHEDULES)) + ("pow<p>",)


def get(schedule: Union[str, Schedule]) -> Schedule:
  """Returns the schedule function for a name (see module docstring) or a callable as is."""
  if callable(schedule):
    return schedule
  name = str(schedule).lower()
  if name in _SCHEDULES:
    return _SCHEDULES[name]
  if name.startswith("pow"):
    try:
      exponent = float(name[3:])
    except ValueError:
      exponent = None
    if exponent is not None:
      return power(exponent)
  raise ValueError(f"unknown mask schedule {schedule!r}; use one of {', '.join(NAMES)}")


def mask_ratio(schedule: Union[str, Schedule], progress):
  """Fraction of unknown tokens still masked at `progress` in [0, 1], clipped to [1e-6, 1]."""
  progress = jnp.clip(jnp.asarray(progress, jnp.float32), 0.0, 1.0)
  return jnp.clip(get(schedule)(progress), MIN_MASK_RATIO, 1.0)


def num_masked_after_steps(num_unknown, num_steps: int,
                           schedule: Union[str, Schedule] = "cosine"):
  """Number of tokens still masked after each decoding step.

  With N = num_unknown and S = num_steps, step i (0-based) ends at progress (i + 1) / S and the
  target count is f_i = floor(mask_ratio((i + 1) / S) * N). The returned counts are

    n_i = max(0, min(f_i, n_{i-1} - 1)),  n_{-1} = N,  and n_{S-1} = 0,

  so every step reveals at least one token while any are masked, and the last step reveals all
  that remain. If N < S the tokens run out early and the remaining steps reveal nothing.

  Args:
    num_unknown: int array of any shape [...] (e.g. [B]): tokens to generate per example.
    num_steps: static number of decoding steps S >= 1.
    schedule: schedule name or callable (see `get`).

  Returns:
    int32 array [..., S], non-increasing along the last axis, ending at 0.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps={num_steps}: decoding needs at least one step")
  n = jnp.asarray(num_unknown, jnp.int32)
  progress = (jnp.arange(num_steps, dtype=jnp.float32) + 1.0) / num_steps
  ratios = mask_ratio(schedule, progress)  # [S]
  targets = jnp.floor(ratios * n[..., None].astype(jnp.float32) + _COUNT_EPS).astype(jnp.int32)
  # Unrolled recursion: n_i = max(0, min(N - 1 - i, min_{j<=i}(f_j + j) - i)).
  steps = jnp.arange(num_steps, dtype=jnp.int32)
  shifted = targets + steps
  running_min = jax.lax.cummin(shifted, axis=shifted.ndim - 1)
  counts = jnp.maximum(jnp.minimum(running_min, n[..., None] - 1) - steps, 0)
  return counts.at[..., -1].set(0)


def num_revealed_per_step(num_unknown, num_steps: int,
                          schedule: Union[str, Schedule] = "cosine"):
  """Tokens revealed at each step: int32 [..., S] that sums to num_unknown."""
  counts = num_masked_after_steps(num_unknown, num_steps, schedule)
  before = jnp.concatenate(
      [jnp.asarray(num_unknown, jnp.int32)[..., None], counts[..., :-1]], axis=-1)
  return before - counts
