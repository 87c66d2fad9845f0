"""FID statistics and the Fréchet distance (numpy only; no model runs here)."""
import numpy as np
import pytest
import scipy.linalg

from muse_jax.evaluation import fid as F
from muse_jax.models.inception_preprocess import preprocess, validate_images


def random_spd(rng, d, scale=1.0):
  a = rng.standard_normal((d, d))
  return scale * (a @ a.T / d + 0.1 * np.eye(d))


def sqrtm_reference(mu1, s1, mu2, s2):
  """pytorch-fid's recipe, written independently: scipy sqrtm of the product, real part."""
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  assert np.abs(np.imag(covmean)).max() < 1e-6
  diff = mu1 - mu2
  return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(covmean))


def test_closed_form_for_commuting_covariances():
  rng = np.random.default_rng(0)
  d = 16
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
  want = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
  got = F.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  np.testing.assert_allclose(got, want, rtol=1e-12)
  # The same eigenvalues in a shared rotated basis: the distance does not change.
  q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  got = F.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
  np.testing.assert_allclose(got, want, rtol=1e-10)


def test_matches_scipy_sqrtm_reference_on_random_features():
  rng = np.random.default_rng(1)
  d, n = 48, 400
  x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3 + 1.0
  y = rng.gamma(2.0, 0.5, (n + 37, d)) @ rng.standard_normal((d, d)) * 0.2
  want = sqrtm_reference(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
  sx = F.FeatureStats(d).update(x)
  sy = F.FeatureStats(d).update(y)
  np.testing.assert_allclose(F.fid(sx, sy), want, rtol=1e-9)
  # Non-commuting SPD matrices directly.
  s1, s2 = random_spd(rng, d), random_spd(rng, d, 3.0)
  mu = rng.standard_normal(d)
  np.testing.assert_allclose(F.frechet_distance(mu, s1, 0 * mu, s2),
                             sqrtm_reference(mu, s1, 0 * mu, s2), rtol=1e-9)


@pytest.mark.parametrize("n", [500, 20])   # 20 < D: singular covariance
def test_self_distance_is_zero_and_grows_with_a_mean_shift(n):
  rng = np.random.default_rng(2)
  d = 64
  x = np.abs(rng.standard_normal((n, d)))          # non-negative, like pooled ReLU features
  base = F.FeatureStats(d).update(x)
  assert abs(F.fid(base, base)) < 1e-12 * np.trace(base.cov)
  direction = rng.standard_normal(d)
  shifts = [0.1, 0.5, 1.0, 2.0, 4.0]
  values = [F.fid(base, F.FeatureStats(d).update(x + t * direction)) for t in shifts]
  assert all(a < b for a, b in zip(values, values[1:]))
  # A shift leaves the covariance: FID = t^2 ||direction||^2.
  np.testing.assert_allclose(values, np.square(shifts) * (direction @ direction), rtol=1e-6)


def test_streaming_statistics_equal_one_shot():
  rng = np.random.default_rng(3)
  d = 32
  x = (rng.gamma(1.5, 1.0, (301, d)) + 2.0).astype(np.float32)
  stats = F.FeatureStats(d)
  for lo, hi in [(0, 1), (1, 1), (1, 64), (64, 200), (200, 301)]:   # incl. an empty batch
    stats.update(x[lo:hi])
  x64 = x.astype(np.float64)
  assert stats.count == 301
  np.testing.assert_allclose(stats.mean, x64.mean(0), rtol=1e-13)
  np.testing.assert_allclose(stats.cov, np.cov(x64, rowvar=False), rtol=1e-10, atol=1e-13)
  # Merging the statistics of two shards (two processes) gives the same.
  merged = F.FeatureStats(d).update(x[:100]).merge(F.FeatureStats(d).update(x[100:]))
  assert merged.count == 301
  np.testing.assert_allclose(merged.cov, stats.cov, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(merged.mean, stats.mean, rtol=1e-14)


def test_npz_round_trip_and_merge_from_file(tmp_path):
  rng = np.random.default_rng(4)
  d = 24
  x = rng.standard_normal((90, d))
  part = F.FeatureStats(d).update(x[:50])
  path = str(tmp_path / "stats.npz")
  F.save_stats(path, part)
  with np.load(path) as z:
    assert sorted(z.files) == ["count", "cov", "mean"]
  g = F.load_stats(path)
  assert g.count == 50
  np.testing.assert_array_equal(g.mean, part.mean)
  np.testing.assert_array_equal(g.cov, part.cov)
  resumed = F.FeatureStats.from_gaussian(g).update(x[50:])
  whole = F.FeatureStats(d).update(x)
  np.testing.assert_allclose(resumed.cov, whole.cov, rtol=1e-10, atol=1e-13)
  assert abs(F.fid(g, part)) < 1e-10
  # pytorch-fid's files hold mu / sigma only.
  np.savez(tmp_path / "pfid.npz", mu=g.mean, sigma=g.cov)
  other = F.load_stats(str(tmp_path / "pfid.npz"))
  assert other.count is None and abs(F.fid(other, g)) < 1e-10
  with pytest.raises(ValueError, match="without a count"):
    F.FeatureStats.from_gaussian(other)
  np.savez(tmp_path / "bad.npz", m=g.mean)
  with pytest.raises(ValueError, match=r"expected arrays mean, cov, count .* found \['m'\]"):
    F.load_stats(str(tmp_path / "bad.npz"))
  # Provenance: an info dict rides along and is read back; files without one give None.
  assert F.load_stats_info(path) is None and F.load_stats_info(str(tmp_path / "pfid.npz")) is None
  info = {"images": "/data/ref", "count": 50, "inception": {"variant": "fid", "input_size": 299}}
  F.save_stats(path, part, info)
  assert F.load_stats_info(path) == info
  np.testing.assert_array_equal(F.load_stats(path).cov, part.cov)


@pytest.mark.parametrize("images,words", [
    (np.zeros((8, 8, 3), np.uint8), r"\[batch, height, width, 3\] \(NHWC, RGB\), got shape "
                                    r"\(8, 8, 3\)"),
    (np.zeros((2, 3, 8, 8), np.float32), r"got shape \(2, 3, 8, 8\)"),
    (np.zeros((2, 8, 8, 3), np.int32), "uint8 in \\[0, 255\\] or float in \\[0, 1\\], got dtype "
                                       "int32"),
    (np.full((2, 8, 8, 3), 255.0, np.float32), r"must lie in \[0, 1\], got values in "
                                               r"\[255.0, 255.0\]"),
    (np.full((1, 8, 8, 3), np.nan, np.float32), r"must lie in \[0, 1\]"),
    (np.full((1, 8, 8, 3), -0.5, np.float64), r"got values in \[-0.5, -0.5\]"),
])
def test_bad_images_are_rejected(images, words):
  with pytest.raises(ValueError, match=words):
    validate_images(images)
  with pytest.raises(ValueError, match=words):
    preprocess(images)


def test_bad_features_and_statistics_are_rejected():
  stats = F.FeatureStats(4)
  with pytest.raises(ValueError, match=r"\[batch, 4\], got shape \(3, 5\)"):
    stats.update(np.zeros((3, 5)))
  with pytest.raises(ValueError, match=r"got shape \(4,\)"):
    stats.update(np.zeros(4))
  with pytest.raises(ValueError, match="floating point, got dtype int64"):
    stats.update(np.zeros((3, 4), np.int64))
  x = np.zeros((3, 4))
  x[1, 2] = np.nan
  with pytest.raises(ValueError, match="1 of 3 feature rows are not finite"):
    stats.update(x)
  assert stats.count == 0
  with pytest.raises(ValueError, match="at least 2 features, have 1"):
    stats.update(np.ones((1, 4))).cov
  with pytest.raises(ValueError, match="dimension 4 and 5"):
    stats.merge(F.FeatureStats(5))
  with pytest.raises(ValueError, match=r"sigma2 has shape \(3, 3\); expected \(4, 4\)"):
    F.frechet_distance(np.zeros(4), np.eye(4), np.zeros(4), np.eye(3))
