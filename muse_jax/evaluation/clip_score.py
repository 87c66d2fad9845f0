"""CLIP score: how well images match their captions, from CLIP embeddings.

For N image-caption pairs with CLIP embeddings E_img[i], E_txt[i] (projected, any norm):
  cos_i      = <E_img[i], E_txt[i]> / (||E_img[i]|| ||E_txt[i]||)
  clip_score = (1/N) sum_i w max(cos_i, 0),   w = 100
  mean_cosine = (1/N) sum_i cos_i
`clip_score` is the convention of torchmetrics' `CLIPScore` (which clamps 100 cos at 0) and the
form of Hessel et al. (2021), whose CLIPScore = w max(cos, 0) uses w = 2.5 to spread the
values of their ViT-B/32 model; with w = 100 here the score is the clipped cosine in percent.
The clamp only changes pairs with negative cosine, which matched pairs rarely have.

Muse (Chang et al., 2023, Tables 1 and 2) reports CLIP scores such as 0.32 (MS-COCO
zero-shot): a cosine on the 0..1 scale (w = 1), i.e. `mean_cosine` (the paper does not say
whether it clamps; that matters only for negative cosines). 0.32 is 32 on the w = 100 scale.
Scores from different CLIP models, preprocessings or caption tokenizations are not comparable;
report which were used.

Streaming: `ClipScoreStats` keeps the pair count and, in float64, the sums of cos_i and of
max(cos_i, 0). Batches, shards and processes merge by adding these three (`merge`), so the
score of the union equals the score computed in one pass. Embeddings are validated: two
[N, D] floating arrays of one shape, finite, with non-zero norms.

`ClipScorer` puts it together for a loaded CLIP: images and token ids in, statistics out.
With a Hugging Face CLIP directory (model.safetensors, config.json, vocab.json, merges.txt):
  cfg, params = muse_jax.weights.clip.load_clip(d)
  tok = muse_jax.encoders.clip_tokenizer.CLIPTokenizer.from_dir(d)   # max_length 77
  scorer = ClipScorer(params, cfg)
  for images, captions in batches:          # images [B, H, W, 3] uint8 or float in [0, 1]
    t = tok(captions)
    scorer.update(images, t.ids, t.mask)
  scorer.stats.clip_score(), scorer.stats.mean_cosine()
"""
from __future__ import annotations

import numpy as np

from muse_jax.models.clip import CLIPConfig
from muse_jax.weights.clip import embed_fns

SCALE = 100.0


def cosine_similarity(image_embeds, text_embeds) -> np.ndarray:
  """Row-wise cosine [N] (float64) of two [N, D] embedding arrays; validates them."""
  a, b = np.asarray(image_embeds), np.asarray(text_embeds)
  for name, x in (("image", a), ("text", b)):
    if x.ndim != 2:
      raise ValueError(f"{name} embeddings must be [pairs, dim], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
      raise ValueError(f"{name} embeddings must be floating point, got dtype {x.dtype}")
  if a.shape != b.shape:
    raise ValueError(f"image and text embeddings must pair up row by row: shapes {a.shape} "
                     f"and {b.shape} differ")
  a, b = a.astype(np.float64), b.astype(np.float64)
  na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
  for name, x, n in (("image", a, na), ("text", b, nb)):
    bad = ~np.all(np.isfinite(x), axis=1) | (n == 0)
    if bad.any():
      raise ValueError(f"{int(bad.sum())} of {len(x)} {name} embeddings are zero or not "
                       f"finite (rows {np.flatnonzero(bad)[:8].tolist()})")
  return np.einsum("nd,nd->n", a, b) / (na * nb)


class ClipScoreStats:
  """Mergeable float64 sums over image-caption pairs (module docstring)."""

  def __init__(self):
    self.count = 0
    self.sum_cosine = 0.0
    self.sum_clipped = 0.0

  def update(self, image_embeds, text_embeds) -> "ClipScoreStats":
    """Adds the pairs (image_embeds[i], text_embeds[i]) of a batch. Returns self."""
    cos = cosine_similarity(image_embeds, text_embeds)
    self.count += len(cos)
    self.sum_cosine += float(np.sum(cos))
    self.sum_clipped += float(np.sum(np.maximum(cos, 0.0)))
    return self

  def merge(self, other: "ClipScoreStats") -> "ClipScoreStats":
    """Statistics of both sets (a new object): the three sums add."""
    out = ClipScoreStats()
    out.count = self.count + other.count
    out.sum_cosine = self.sum_cosine + other.sum_cosine
    out.sum_clipped = self.sum_clipped + other.sum_clipped
    return out

  def _need_pairs(self):
    if self.count < 1:
      raise ValueError("no image-caption pairs accumulated")

  def clip_score(self, w: float = SCALE) -> float:
    """w * mean of max(cos, 0) (w = 100: torchmetrics' scale)."""
    self._need_pairs()
    return w * self.sum_clipped / self.count

  def mean_cosine(self) -> float:
    """Mean raw cosine (the 0..1 scale Muse reports)."""
    self._need_pairs()
    return self.sum_cosine / self.count


def clip_score(image_embeds, text_embeds, w: float = SCALE) -> float:
  """One-shot w * mean(max(cos, 0)) over the pairs of two [N, D] arrays."""
  return ClipScoreStats().update(image_embeds, text_embeds).clip_score(w)


def mean_cosine(image_embeds, text_embeds) -> float:
  """One-shot mean cosine over the pairs of two [N, D] arrays."""
  return ClipScoreStats().update(image_embeds, text_embeds).mean_cosine()


class ClipScorer:
  """Embeds image-caption batches with a CLIP model and accumulates `ClipScoreStats`.

  `update(images, ids, mask=None)`: images [B, H, W, 3] uint8 or float in [0, 1] (resized,
  cropped and normalised as transformers' CLIPImageProcessor does); ids [B, L] CLIP BPE token
  ids with start/end tokens and mask [B, L] (`muse_jax.encoders.clip_tokenizer`, or
  `transformers.CLIPTokenizer(..., padding="max_length", max_length=77, truncation=True)`).
  """

  def __init__(self, params: dict, cfg: CLIPConfig):
    self.image_embeds, self.text_embeds = embed_fns(params, cfg)
    self.stats = ClipScoreStats()

  def update(self, images, ids, mask=None) -> "ClipScorer":
    if len(images) != len(ids):
      raise ValueError(f"{len(images)} images but {len(ids)} captions")
    self.stats.update(self.image_embeds(images), self.text_embeds(ids, mask))
    return self
