"""Tests for muse_jax.sampling.mask_schedule."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from muse_jax.sampling import mask_schedule

ALL = ["cosine", "linear", "uniform", "square", "cubic", "sqrt", "log", "exp", "pow2.5"]

# Independent float64 definitions of each schedule.
REFERENCE = {
    "cosine": lambda r: math.cos(math.pi / 2 * r),
    "linear": lambda r: 1 - r,
    "uniform": lambda r: 1 - r,
    "square": lambda r: 1 - r**2,
    "cubic": lambda r: 1 - r**3,
    "sqrt": lambda r: 1 - math.sqrt(r),
    "log": lambda r: 1 - math.log2(1 + r),
    "exp": lambda r: 2 - 2**r,
    "pow2.5": lambda r: 1 - r**2.5,
}


def reference_counts(n, steps, name):
  """Python loop over the documented recursion, in float64."""
  counts, prev = [], n
  for i in range(steps):
    ratio = min(max(REFERENCE[name]((i + 1) / steps), 1e-6), 1.0)
    target = math.floor(ratio * n + 1e-9)
    cur = max(0, min(target, prev - 1))
    if i == steps - 1:
      cur = 0
    counts.append(cur)
    prev = cur
  return counts


@pytest.mark.parametrize("name", ALL)
def test_ratio_values_endpoints_and_monotonic(name):
  r = np.linspace(0, 1, 101)
  got = np.asarray(mask_schedule.mask_ratio(name, r))
  want = np.clip([REFERENCE[name](x) for x in r], 1e-6, 1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert got[0] == 1.0
  assert got[-1] == pytest.approx(1e-6)
  assert np.all(np.diff(got) <= 1e-7)
  assert np.all((got >= 1e-6) & (got <= 1))


def test_cosine_known_value_and_names():
  assert float(mask_schedule.mask_ratio("cosine", 0.5)) == pytest.approx(math.sqrt(0.5))
  assert float(mask_schedule.mask_ratio("linear", 0.25)) == pytest.approx(0.75)
  assert mask_schedule.get("uniform") is mask_schedule.linear
  with pytest.raises(ValueError, match="unknown mask schedule"):
    mask_schedule.get("zigzag")
  with pytest.raises(ValueError, match="unknown mask schedule"):
    mask_schedule.get("powx")
  with pytest.raises(ValueError, match="exponent"):
    mask_schedule.get("pow-1")
  # A callable passes through.
  assert mask_schedule.get(mask_schedule.cosine) is mask_schedule.cosine


@pytest.mark.parametrize("name", ["cosine", "linear", "square", "log", "exp"])
def test_counts_match_reference(name):
  sizes = [0, 1, 3, 5, 16, 23, 24, 25, 100, 256, 4096]
  for steps in [1, 2, 3, 8, 12, 24]:
    got = np.asarray(mask_schedule.num_masked_after_steps(jnp.asarray(sizes), steps, name))
    assert got.shape == (len(sizes), steps)
    for row, n in zip(got, sizes):
      assert row.tolist() == reference_counts(n, steps, name), (name, steps, n)


def test_counts_properties_cosine_24():
  n = jnp.arange(0, 300)
  counts = np.asarray(mask_schedule.num_masked_after_steps(n, 24, "cosine"))
  revealed = np.asarray(mask_schedule.num_revealed_per_step(n, 24, "cosine"))
  assert np.all(counts[:, -1] == 0)
  np.testing.assert_array_equal(revealed.sum(-1), np.asarray(n))
  before = np.concatenate([np.asarray(n)[:, None], counts[:, :-1]], axis=1)
  # At least one token revealed at each step while any remain masked.
  assert np.all((revealed >= 1) | (before == 0))
  assert np.all(revealed >= 0)
  # With 256 tokens (16x16) every step reveals at least one and the first step few.
  row = counts[256]
  assert row[0] == math.floor(math.cos(math.pi / 48) * 256)
  assert np.all(np.diff(np.concatenate([[256], row])) < 0)


def test_counts_float_boundary_is_exact():
  # (1 - 1/3) * 3 is exactly 2 but 1.9999999 in float32; the count must still be 2.
  assert np.asarray(mask_schedule.num_masked_after_steps(3, 3, "linear")).tolist() == [2, 1, 0]
  with pytest.raises(ValueError):
    mask_schedule.num_masked_after_steps(10, 0)
