"""The frozen models of a precompute run: VQ tokenizer(s) and T5 encoder on the mesh.

`Models.run` takes a process-local batch of images and captions and returns VQ tokens and T5
embeddings, with the batch sharded over the mesh (a global batch in multi-process runs).

Models are built from config: `tokenizer.weights` = '' initialises the VQ tokenizer randomly
from `tokenizer.seed` (tests, benchmarks, demos), otherwise it is a vqgan workdir (whose saved
config.json gives the model's shapes) or a diffusers VQModel; the text encoder follows
`text_encoder` (muse_jax/configs/common_t5.py).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Protocol, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from muse_jax.data import records
from muse_jax.encoders.text_encoder import TextEncoder
from muse_jax.encoders.vq_tokenizer import VQTokenizer, load_vq_params
from muse_jax.models import vqgan as V
from muse_jax.models.functional import functionalize
from muse_jax.workdir.saved_config import adopt_saved_model_config

log = logging.getLogger(__name__)


class ImageTokenizerLike(Protocol):
  """What precompute needs of `muse_jax.encoders.vq_tokenizer.VQTokenizer`."""
  downsample_factor: int

  def encode(self, images) -> jax.Array:
    """images [B, H, W, 3] uint8 (a global array in multi-process runs) -> ids [B, h, w]."""


class TextEncoderLike(Protocol):
  """What precompute needs of `muse_jax.encoders.text_encoder.TextEncoder`."""
  max_length: int

  def tokenize(self, texts: Sequence[str]) -> Any:
    """-> object with ids [B, L] and mask [B, L] (host arrays)."""

  def encode_tokens(self, ids, mask) -> tuple[jax.Array, jax.Array]:
    """Process-local ids/mask -> (embeddings [B, L, D], mask [B, L]) as global arrays."""


def local_rows(x) -> np.ndarray:
  """This process's rows of a batch-sharded (global) array, in order."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  seen, parts = set(), []
  for s in sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0):
    start = s.index[0].start or 0
    if start not in seen:
      seen.add(start)
      parts.append(np.asarray(s.data))
  return np.concatenate(parts)


@dataclasses.dataclass
class Models:
  """The frozen models of one precompute run."""
  tokenizer: ImageTokenizerLike
  resolution: int
  text_encoder: TextEncoderLike
  sr_tokenizer: ImageTokenizerLike | None = None
  sr_resolution: int = 0
  codebook_size: int = 0
  text_dim: int = 0
  mesh: Any = None

  def grid(self, tok, res) -> int:
    return res // tok.downsample_factor

  def spec(self) -> records.RecordSpec:
    return records.RecordSpec(
        grid_lo=self.grid(self.tokenizer, self.resolution),
        grid_hi=self.grid(self.sr_tokenizer, self.sr_resolution) if self.sr_tokenizer else 0,
        codebook_size=self.codebook_size, text_dim=self.text_dim,
        text_max_length=int(self.text_encoder.max_length))

  def _batch_sharding(self):
    axes = tuple(a for a in ("data", "fsdp") if self.mesh.shape.get(a, 1) > 1)
    return NamedSharding(self.mesh, P(axes or None))

  def _tokens(self, tok, images: np.ndarray) -> jax.Array:
    x = images
    if jax.process_count() > 1:  # the tokenizer takes a global batch
      x = jax.make_array_from_process_local_data(self._batch_sharding(), images)
    return tok.encode(x)

  def run(self, images_lo: np.ndarray, images_hi: np.ndarray | None,
          captions: list[str]) -> dict[str, np.ndarray]:
    """Process-local batch -> tokens_lo [B, T], tokens_hi, text_emb [B, L, D], text_len [B].

    Every model is dispatched before any result is fetched, so the device runs them back to
    back while the host waits once.
    """
    batch = self.text_encoder.tokenize(captions)
    dev = {"tokens_lo": self._tokens(self.tokenizer, images_lo)}
    if self.sr_tokenizer is not None:
      dev["tokens_hi"] = self._tokens(self.sr_tokenizer, images_hi)
    dev["text_emb"], mask = self.text_encoder.encode_tokens(batch.ids, batch.mask)
    out = {k: local_rows(v) for k, v in dev.items()}
    for k in ("tokens_lo", "tokens_hi"):
      if k in out:
        out[k] = out[k].reshape(len(captions), -1)
    out["text_len"] = local_rows(mask).sum(-1).astype(np.int32)
    return out


def tokenizer_model_config(section, name: str) -> V.VQGANConfig:
  """The tokenizer's model: `section.model`, with the shape keys that the trainer saved in the
  weights workdir's config.json (those are what its checkpoint holds)."""
  model = ml_collections.ConfigDict({"model": section.model.to_dict()})
  if section.weights:
    changed = adopt_saved_model_config(model, str(section.weights))
    if changed:
      log.warning("%s: model keys %s follow %s/config.json", name, ", ".join(changed),
                  section.weights)
  return V.VQGANConfig.from_config(model.model)


def _vq_tokenizer(section, mesh, name: str):
  cfg = tokenizer_model_config(section, name)
  if section.weights:
    params = load_vq_params(section.weights, cfg, what=f"{name}.weights")
  else:
    log.warning("%s.weights is empty: using a randomly initialised tokenizer (seed %d)", name,
                section.seed)
    _, init_fn = functionalize(lambda r: V.VQGAN(cfg, rngs=r))
    with jax.default_device(jax.local_devices()[0]):  # eager: op compiles are cached
      params = jax.device_get(init_fn(jax.random.key(int(section.seed))))
  cfg.token_grid(int(section.resolution))
  # Place the (host) weights replicated on the mesh here: jax.device_put would compare every
  # array across processes first (one collective each) in multi-process runs.
  replicated = NamedSharding(mesh, P())
  params = jax.tree.map(lambda a: jax.make_array_from_callback(
      np.shape(a), replicated, lambda idx, a=np.asarray(a): a[idx]), params)
  return VQTokenizer(cfg, params, mesh), cfg


def build_models(config, mesh, spiece_model: str = "") -> Models:
  """The VQ tokenizer(s) and T5 encoder that `config` describes, on `mesh`."""
  tok, tok_cfg = _vq_tokenizer(config.tokenizer, mesh, "tokenizer")
  sr_tok, sr_res = None, int(config.sr_tokenizer.resolution)
  codebook = tok_cfg.codebook_size
  if sr_res > 0:
    sr_tok, sr_cfg = _vq_tokenizer(config.sr_tokenizer, mesh, "sr_tokenizer")
    if sr_cfg.codebook_size != codebook:
      raise ValueError(f"tokenizer and sr_tokenizer codebooks differ ({codebook} vs "
                       f"{sr_cfg.codebook_size}); records hold one codebook_size")
  te_cfg = ml_collections.ConfigDict(config.text_encoder.to_dict())
  if spiece_model:
    te_cfg.spiece_model = spiece_model
  encoder = TextEncoder.from_config(te_cfg, mesh=mesh, rules=config.mesh.rules)
  if encoder.tokenizer is None:
    raise ValueError("text_encoder.spiece_model is empty: give T5's spiece.model, or set "
                     "precompute.spiece_vocab_size > 0 to train one on the captions (demos)")
  return Models(tok, int(config.tokenizer.resolution), encoder, sr_tok, sr_res, codebook,
                encoder.config.d_model, mesh)
