"""One key per image (muse_jax/sampling/per_image.py): image i does not depend on its batch."""
import jax
import numpy as np
import pytest

from muse_jax.sampling import per_image
from tests.sampling.test_pipeline import pipe, spiece, tiny_run  # noqa: F401 (fixtures)

PROMPTS = ["two red circles", "a blue square on the left", "three green crosses", "a cube"]


def test_each_row_is_its_batch_of_one_and_ignores_its_neighbours(pipe):  # noqa: F811
  keys = per_image.image_keys(7, [0, 1, 2, 3])
  full = per_image.generate(pipe, PROMPTS, keys)
  assert full.images.shape == (4, 32, 32, 3)
  # The same rows in another batch (other neighbours, other positions) are the same images.
  part = per_image.generate(pipe, [PROMPTS[2], PROMPTS[0]], keys[np.array([2, 0])])
  np.testing.assert_array_equal(part.tokens_hi, full.tokens_hi[[2, 0]])
  np.testing.assert_array_equal(part.images, full.images[[2, 0]])
  # Row 1 is what the pipeline's own stages make for its prompt alone with its key split into
  # (base, SR) keys.
  cond, uncond = pipe.conditions(PROMPTS[1:2])
  k_lo, k_hi = jax.random.split(keys[1])
  lo = pipe.run_stage("base", "decode", np.full((1, 16), pipe.base.mask_id),
                      np.ones((1, 16), bool), cond, uncond, k_lo)
  hi = pipe.run_stage("sr", "decode", np.full((1, 64), pipe.sr.mask_id), np.ones((1, 64), bool),
                      cond, uncond, k_hi, tokens_lo=lo)
  np.testing.assert_array_equal(full.tokens_lo[1:2], lo)
  np.testing.assert_array_equal(full.tokens_hi[1:2], hi)
  # Keys differ per index and per seed; the same prompt under two keys gives two images.
  twice = per_image.generate(pipe, [PROMPTS[0]] * 2, keys[:2])
  assert not np.array_equal(twice.tokens_hi[0], twice.tokens_hi[1])
  other_seed = per_image.image_keys(8, [0])
  assert not np.array_equal(jax.random.key_data(other_seed[0]), jax.random.key_data(keys[0]))


def test_bad_keys_and_indices_are_refused(pipe):  # noqa: F811
  with pytest.raises(ValueError, match="2 prompts need 2 keys"):
    per_image.generate(pipe, PROMPTS[:2], per_image.image_keys(0, [0, 1, 2]))
  with pytest.raises(ValueError, match="integers in"):
    per_image.image_keys(0, [-1])
