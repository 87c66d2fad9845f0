"""The networks an evaluation scores images with: Inception-v3 (FID) and CLIP (CLIP score).

Each comes from a weight file when one is given, or with random weights when none is: then the
figures test the pipeline only (they are not comparable with any published figure), and every
report says so (`random_weights`, `note`). Random weights are drawn with numpy from a fixed seed,
so two runs (and a resumed run) score with the same network:
  conv kernels [kh, kw, in, out]: normal with std sqrt(2 / (kh kw in)) (He; keeps ReLU
    activations at one scale through Inception's depth);
  other kernels and embeddings: normal with std 0.02 (transformers' CLIP init);
  norm scales and BatchNorm variances 1, biases and BatchNorm means 0.

`info` dicts name what was used; `fingerprint(info)` is the part that must match for two sets
of features to be comparable (weights digest, variant, input size).

With a `mesh` (`devices.local_mesh()`), the parameters are replicated on its devices once and
each batch's rows are split over them (padded to a multiple of the device count).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from typing import Callable, Optional

import jax
import numpy as np

from muse_jax import paths
from muse_jax.encoders.clip_tokenizer import BOS, EOS, CLIPTokenizer, byte_alphabet
from muse_jax.evaluation import devices
from muse_jax.evaluation.clip_score import SCALE
from muse_jax.models import clip as C
from muse_jax.models import inception as I
from muse_jax.weights import clip as clip_weights
from muse_jax.weights import inception as inception_weights

RANDOM_SEED = 0
FID_RANDOM_NOTE = "random weights: not comparable with published FID"
CLIP_RANDOM_NOTE = "random weights: not comparable with published CLIP scores"
TOKENIZER_FILES = ("vocab.json", "merges.txt")


def random_params(abstract: dict, seed: int = RANDOM_SEED) -> dict:
  """Random float32 numpy params shaped like `abstract` (the module docstring's rules)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    shape = tuple(leaf.shape)
    if name in ("scale", "var"):
      return np.ones(shape, np.float32)
    if name in ("bias", "mean"):
      return np.zeros(shape, np.float32)
    if name == "logit_scale":
      return np.full(shape, np.log(1 / 0.07), np.float32)
    std = np.sqrt(2.0 / np.prod(shape[:3])) if name == "kernel" and len(shape) == 4 else 0.02
    return (std * rng.standard_normal(shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def file_digest(path: str) -> str:
  """sha256 of a weight file, or of a directory's *.safetensors files in name order."""
  files = [paths.resolve(path)]
  if files[0].is_dir():
    files = sorted(f for f in files[0].iterdir() if f.name.endswith(".safetensors"))
  h = hashlib.sha256()
  for f in files:
    with f.open("rb") as fh:
      for block in iter(lambda: fh.read(1 << 22), b""):
        h.update(block)
  return h.hexdigest()


def fingerprint(info: dict) -> dict:
  """The entries of a scorer's `info` that decide its features."""
  return {k: info[k] for k in ("weights_sha256", "variant", "input_size", "model")
          if info.get(k) is not None}


@dataclasses.dataclass
class InceptionScorer:
  """features(uint8 [B, H, W, 3]) -> float32 [B, 2048]; `info` names the weights."""
  features: Callable[[np.ndarray], np.ndarray]
  info: dict


def load_inception(weights: Optional[str], variant: str = "fid",
                   input_size: int = I.INPUT_SIZE, mesh=None) -> InceptionScorer:
  """Inception-v3 pool features from `weights` (safetensors, torchvision's key layout), or
  random weights when `weights` is None or ''."""
  if input_size < I.MIN_SIZE:
    raise ValueError(f"--inception_size={input_size}: Inception-v3 needs at least "
                     f"{I.MIN_SIZE} px (FID is defined at {I.INPUT_SIZE})")
  if variant not in I.VARIANTS:
    raise ValueError(f"--inception_variant={variant!r}: choose one of {', '.join(I.VARIANTS)}")
  if weights:
    params = inception_weights.load_inception(weights)
    info = {"weights": str(paths.resolve(weights)), "weights_sha256": file_digest(weights),
            "random_weights": False}
  else:
    params = random_params(inception_weights.model_def(variant).abstract_params())
    info = {"weights": None, "weights_sha256": f"random(seed={RANDOM_SEED})",
            "random_weights": True, "note": FID_RANDOM_NOTE}
  info.update(variant=variant, input_size=int(input_size))
  if input_size != I.INPUT_SIZE:
    info["input_size_note"] = (f"images resized to {input_size} px, not {I.INPUT_SIZE}: "
                               "not comparable with any published FID")
  if mesh is None:
    return InceptionScorer(inception_weights.feature_fn(params, variant, input_size), info)
  fn = inception_weights.feature_fn(devices.replicate(params, mesh), variant, input_size,
                                    shard=devices.rows_on(mesh))
  return InceptionScorer(devices.padded_rows(fn, mesh.size), info)


def bytes_tokenizer(max_length: int) -> CLIPTokenizer:
  """CLIP's tokenizer over a vocabulary of bytes only (no merges): the text tower's input when
  no vocabulary is given (random weights). Ids stay below 514; <|endoftext|> is the largest,
  as argmax pooling needs."""
  alphabet = byte_alphabet()
  vocab = {s: i for i, s in enumerate(alphabet + [a + "</w>" for a in alphabet])}
  vocab[BOS], vocab[EOS] = len(vocab), len(vocab) + 1
  with tempfile.TemporaryDirectory() as d:
    files = [os.path.join(d, f) for f in TOKENIZER_FILES]
    with open(files[0], "w", encoding="utf-8") as f:
      json.dump(vocab, f)
    with open(files[1], "w", encoding="utf-8") as f:
      f.write("#version: 0.2\n")
    return CLIPTokenizer(*files, max_length=max_length)


class ClipScorer:
  """CLIP embeddings of uint8 image batches and their captions (the CLIP score's inputs).

  `embed(images, captions)`: image and caption embeddings of the whole (padded) batch, so that
  every call has one shape and compiles once.
  """

  def __init__(self, params: dict, cfg: C.CLIPConfig, tokenizer: CLIPTokenizer, info: dict,
               mesh=None):
    if mesh is None:
      self.image_embeds, self.text_embeds = clip_weights.embed_fns(params, cfg)
    else:
      image, text = clip_weights.embed_fns(devices.replicate(params, mesh), cfg,
                                           shard=devices.rows_on(mesh))
      self.image_embeds = devices.padded_rows(image, mesh.size)
      self.text_embeds = devices.padded_rows(text, mesh.size)
    self.tokenizer, self.info = tokenizer, info

  def embed(self, images: np.ndarray, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(image embeddings, caption embeddings), float32 [B, projection_dim] each."""
    tokens = self.tokenizer(captions)
    return self.image_embeds(images), self.text_embeds(tokens.ids, tokens.mask)


def load_clip(weights: Optional[str], model: str = "vit_b32", mesh=None) -> ClipScorer:
  """CLIP from a Hugging Face checkpoint (a directory with model.safetensors, config.json,
  vocab.json and merges.txt, or its .safetensors file with those files next to it), or the
  random-weight `model` (muse_jax.models.clip.CONFIGS) with `bytes_tokenizer` when `weights` is
  None or ''."""
  if weights:
    w = paths.resolve(weights)
    if not w.exists():
      raise FileNotFoundError(f"--clip_weights={weights}: no such file or directory")
    d = w if w.is_dir() else w.parent
    missing = [f for f in ("config.json",) + TOKENIZER_FILES if not (d / f).is_file()]
    if missing:
      raise FileNotFoundError(f"--clip_weights={weights}: {d} has no {', '.join(missing)} "
                              "(a Hugging Face CLIP checkpoint has all of them)")
    cfg, params = clip_weights.load_clip(weights)
    tokenizer = CLIPTokenizer.from_dir(str(d), max_length=cfg.text.max_length)
    info = {"weights": str(w), "weights_sha256": file_digest(weights),
            "random_weights": False, "tokenizer": str(d)}
  else:
    cfg = C.get_config(model)
    params = random_params(clip_weights.model_def(cfg).abstract_params())
    tokenizer = bytes_tokenizer(cfg.text.max_length)
    info = {"weights": None, "weights_sha256": f"random(seed={RANDOM_SEED})",
            "random_weights": True, "model": model, "tokenizer": "bytes (no vocabulary)",
            "note": CLIP_RANDOM_NOTE}
  info.update(image_size=cfg.vision.image_size, projection_dim=cfg.projection_dim,
              scale=SCALE)
  return ClipScorer(params, cfg, tokenizer, info, mesh)
