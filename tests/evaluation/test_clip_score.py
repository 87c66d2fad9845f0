"""CLIP score statistics against a float64 numpy reference; ClipScorer on a tiny random CLIP."""
import numpy as np
import pytest

from muse_jax.evaluation import clip_score as S


def reference(img, txt):
  """(100 * mean max(cos, 0), mean cos), written out in float64."""
  img, txt = np.float64(img), np.float64(txt)
  cos = np.array([a @ b / np.sqrt((a @ a) * (b @ b)) for a, b in zip(img, txt)])
  return 100.0 * np.mean(np.maximum(cos, 0.0)), np.mean(cos)


def pairs(rng, n, d, dtype=np.float32):
  """Pairs with a spread of cosines of both signs and norms far from 1."""
  img = rng.standard_normal((n, d)) * rng.uniform(0.1, 30, (n, 1))
  txt = (rng.uniform(-1, 1, (n, 1)) * img + rng.standard_normal((n, d))) * 7.0
  return img.astype(dtype), txt.astype(dtype)


def test_matches_float64_reference():
  rng = np.random.default_rng(0)
  img, txt = pairs(rng, 200, 64)
  want_score, want_cos = reference(img, txt)
  np.testing.assert_allclose(S.clip_score(img, txt), want_score, rtol=1e-12)
  np.testing.assert_allclose(S.mean_cosine(img, txt), want_cos, rtol=1e-12)
  # Both signs occur, so the clamp matters here.
  cos = S.cosine_similarity(img, txt)
  assert cos.min() < -0.2 and cos.max() > 0.2
  assert S.clip_score(img, txt) > 100 * S.mean_cosine(img, txt) + 1
  np.testing.assert_allclose(S.clip_score(img, txt, w=2.5), want_score / 40, rtol=1e-12)


def test_clipping_at_zero():
  img = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]], np.float32)
  txt = np.array([[-3.0, 0.0], [1.0, 1.0], [0.0, 5.0]], np.float32)   # cos -1, 1/sqrt2, 1
  assert S.clip_score(img, txt) == pytest.approx(100 * (0 + 2 ** -0.5 + 1) / 3, rel=1e-12)
  assert S.mean_cosine(img, txt) == pytest.approx((-1 + 2 ** -0.5 + 1) / 3, rel=1e-12)
  assert S.clip_score(img[:1], txt[:1]) == 0.0
  assert S.clip_score(img, img) == pytest.approx(100.0, rel=1e-12)


def test_streaming_equals_one_shot():
  rng = np.random.default_rng(1)
  img, txt = pairs(rng, 103, 32)
  stream = S.ClipScoreStats()
  for lo in range(0, 103, 10):   # batches of 10, the last of 3
    stream.update(img[lo:lo + 10], txt[lo:lo + 10])
  a = S.ClipScoreStats().update(img[:50], txt[:50])
  b = S.ClipScoreStats().update(img[50:], txt[50:])
  merged = a.merge(b)
  for s in (stream, merged):
    assert s.count == 103
    np.testing.assert_allclose(s.clip_score(), S.clip_score(img, txt), rtol=1e-12)
    np.testing.assert_allclose(s.mean_cosine(), S.mean_cosine(img, txt), rtol=1e-12)
  assert a.count == 50 and b.count == 53   # merge returned a new object


def test_bad_inputs_are_clear_errors():
  img = np.ones((4, 8), np.float32)
  with pytest.raises(ValueError, match=r"text embeddings must be \[pairs, dim\], got shape "
                                       r"\(4, 8, 1\)"):
    S.clip_score(img, img[..., None])
  with pytest.raises(ValueError, match=r"pair up row by row: shapes \(4, 8\) and \(3, 8\)"):
    S.clip_score(img, img[:3])
  with pytest.raises(ValueError, match="image embeddings must be floating point, got dtype "
                                       "int64"):
    S.clip_score(np.ones((4, 8), np.int64), img)
  bad = img.copy()
  bad[1] = 0.0
  bad[3, 2] = np.nan
  with pytest.raises(ValueError, match=r"2 of 4 text embeddings are zero or not finite "
                                       r"\(rows \[1, 3\]\)"):
    S.clip_score(img, bad)
  with pytest.raises(ValueError, match="no image-caption pairs"):
    S.ClipScoreStats().clip_score()
  stats = S.ClipScoreStats()
  with pytest.raises(ValueError):
    stats.update(img, img[:3])
  assert stats.count == 0   # a rejected batch adds nothing


def test_scorer_composes_embeddings_and_stats():
  import jax
  from muse_jax.models import clip as C
  from muse_jax.weights.clip import model_def
  cfg = C.get_config("tiny")
  rng = np.random.default_rng(3)   # random weights straight from numpy (no eager init)
  params = jax.tree.map(lambda x: rng.normal(0, 0.2, x.shape).astype(np.float32),
                        model_def(cfg).abstract_params())
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (4, 40, 36, 3)).astype(np.uint8)
  ids = rng.integers(0, 1000, (4, 7)).astype(np.int32)
  scorer = S.ClipScorer(params, cfg)
  for lo in (0, 2):   # one compilation per tower: both batches have one shape
    scorer.update(images[lo:lo + 2], ids[lo:lo + 2], np.ones((2, 7), np.int32))
  img = np.concatenate([scorer.image_embeds(images[lo:lo + 2]) for lo in (0, 2)])
  txt = np.concatenate([scorer.text_embeds(ids[lo:lo + 2]) for lo in (0, 2)])
  assert scorer.stats.count == 4
  np.testing.assert_allclose(scorer.stats.clip_score(), reference(img, txt)[0], rtol=1e-12)
  np.testing.assert_allclose(scorer.stats.mean_cosine(), reference(img, txt)[1], rtol=1e-12)
  with pytest.raises(ValueError, match="3 images but 2 captions"):
    scorer.update(images[:3], ids[:2])
