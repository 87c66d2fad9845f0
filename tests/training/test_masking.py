import jax
import jax.numpy as jnp
import numpy as np

from muse_jax.training import masking
from muse_jax.training.losses import masked_cross_entropy_sums


def test_mask_ratio_statistics():
  mask, ratio = masking.sample_mask(jax.random.key(0), 20000, 256)
  # p(r) = 2/pi (1-r^2)^(-1/2) has mean 2/pi and median sin(pi/4)
  assert abs(float(ratio.mean()) - 2 / np.pi) < 0.01
  assert abs(float(jnp.median(ratio)) - np.sin(np.pi / 4)) < 0.015
  counts = np.asarray(mask.sum(-1))
  expected = np.clip(np.ceil(np.asarray(ratio) * 256), 1, 256)
  np.testing.assert_array_equal(counts, expected)
  assert abs(counts.mean() / 256 - 2 / np.pi) < 0.01


def test_at_least_one_token_masked():
  # Very short sequences with tiny ratios still mask one token.
  mask, _ = masking.sample_mask(jax.random.key(1), 5000, 1)
  assert bool(mask.all())
  mask, ratio = masking.sample_mask(jax.random.key(2), 5000, 4)
  assert int(mask.sum(-1).min()) >= 1


def test_mask_positions_are_uniform():
  mask, _ = masking.sample_mask(jax.random.key(3), 20000, 16)
  per_pos = np.asarray(mask.mean(0))
  assert per_pos.max() - per_pos.min() < 0.03


def test_cfg_dropout_rate():
  lens = jnp.full((20000,), 7, jnp.int32)
  out = masking.drop_condition(jax.random.key(4), lens, 0.1)
  frac = float((out == 0).mean())
  assert abs(frac - 0.1) < 0.01
  assert set(np.unique(np.asarray(out))) == {0, 7}
  np.testing.assert_array_equal(masking.drop_condition(jax.random.key(4), lens, 0.0), lens)


def test_loss_ignores_unmasked_positions():
  k1, k2, k3 = jax.random.split(jax.random.key(5), 3)
  logits = jax.random.normal(k1, (4, 10, 7))
  targets = jax.random.randint(k2, (4, 10), 0, 7)
  mask = jax.random.bernoulli(k3, 0.5, (4, 10))
  nll, correct = masked_cross_entropy_sums(logits, targets, mask)
  noisy = jnp.where(mask[..., None], logits, 100.0 * jax.random.normal(k1, logits.shape))
  nll2, correct2 = masked_cross_entropy_sums(noisy, targets, mask)
  np.testing.assert_allclose(nll, nll2, rtol=1e-6)
  assert float(correct) == float(correct2)
  # and matches a direct computation on the masked entries
  logp = jax.nn.log_softmax(logits)
  ref = -sum(float(logp[b, t, targets[b, t]]) for b in range(4) for t in range(10)
             if mask[b, t])
  np.testing.assert_allclose(float(nll), ref, rtol=1e-5)


def test_label_smoothing_mixes_uniform_term():
  logits = jnp.array([[[2.0, 0.0, -1.0]]])
  targets = jnp.array([[0]])
  mask = jnp.array([[True]])
  nll0, _ = masked_cross_entropy_sums(logits, targets, mask)
  nll1, _ = masked_cross_entropy_sums(logits, targets, mask, label_smoothing=0.1)
  logp = jax.nn.log_softmax(logits[0, 0])
  np.testing.assert_allclose(nll1, 0.9 * -logp[0] + 0.1 * -logp.mean(), rtol=1e-6)
  assert float(nll1) > float(nll0)
