"""The cascaded Muse sampler: text -> T5 -> base tokens -> SR tokens -> VQ decode -> images.

  pipe = Pipeline.from_config(config, workdir)        # config: muse_jax/configs/common_pipeline.py
  pipe = Pipeline.from_workdirs(base=DIR, sr=DIR)     # trained workdirs, no config file
  pipe = Pipeline.from_bundle(DIR)                    # python -m muse_jax.export --pipeline=DIR
  out = pipe.generate(["a red cube on a blue sphere"], negative_prompt="blurry", seed=0)
  out.images                                           # float32 [B, H, W, 3] in [0, 1]

Stages (Muse Sec. 2, 3.3):
  1. T5 encodes the prompts once -> embeddings [B, S, D] and valid lengths [B]. The negative
     prompt (if any) is encoded the same way and replaces the null condition (text_len 0) as
     the unconditional branch of classifier-free guidance (Sec. 2.7).
  2. Base: parallel decoding of the low-res grid (e.g. 16x16) from all-mask tokens
     (`sampling.base_steps`, cosine schedule, guidance from the `sampling` section).
  3. SR (optional): parallel decoding of the high-res grid (e.g. 64x64) conditioned on the
     base tokens and the same text (`sampling.sr_steps`).
  4. The VQ decoder of the last stage's tokenizer turns tokens into pixels.

Each transformer stage is ONE jitted function (stage_fns.py): the text context (and, for SR,
the low-res encoder) is computed once, outside the decoding loop, for the conditional and
unconditional rows; the loop (`parallel_decode.decode`) runs one 2B forward per step on the
cached context. Compiled functions are cached per (stage, mode, options); the parameters are
arguments, never constants.

Editing (Sec. 3.3), from an image at the output resolution and a pixel mask (True/white =
regenerate):
  inpaint / outpaint: the image is VQ-encoded at both resolutions (downsampled for the base
    tokenizer); the one pixel mask becomes a token mask on each grid; the base stage inpaints
    the low-res tokens, then the SR stage inpaints the high-res tokens conditioned on them.
    Tokens outside the mask are kept exactly.
  mask-free: `editing.mask_free_edit` (100 iterations, 8% resampled, guidance 4, top-k 3 by
    default; `sampling.editing`) on the low-res tokens with the base model, then on the
    high-res tokens with the SR model conditioned on the edited low-res tokens.

Everything runs on one device (the first local one) unless `from_config` is given a mesh of
this process's devices: then every parameter is replicated on them and each batch's rows are
split over its `data` axis. T5-XXL in bf16 plus the 632M/268M stages fit one 80 GB
accelerator. Transformer stages whose model dtype is bfloat16 keep their parameters in bfloat16
(cast once at load). No TensorFlow is imported.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from muse_jax.encoders.text_encoder import TextEncoder
from muse_jax.sampling import bundle, chain, editing, parallel_decode, stage_fns
from muse_jax.sampling.image_io import as_bool_masks, as_float_images, resize_images
from muse_jax.sampling.loading import LoadedStage, load_transformer, load_vq, single_device_mesh

# --------------------------------------------------------------------------------------------
# The pipeline.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
  """images float32 [B, H, W, 3] in [0, 1]; tokens of each stage, int32 [B, T]."""
  images: np.ndarray
  tokens_lo: np.ndarray
  tokens_hi: Optional[np.ndarray] = None


class Pipeline:
  """The loaded cascade. Build it with `from_config`, or from parts (tests, custom stages).

  Args:
    sampling: the `sampling` ConfigDict (muse_jax/configs/common_sampling.py); read at call time, so
      changing it (steps, guidance, ...) affects later calls.
    text_encoder: a `TextEncoder` (or anything with `encode(list[str]) -> (emb, mask)` and a
      `config.d_model`).
    vq_lo: the tokenizer of the base tokens (`VQTokenizer`).
    base: the base `LoadedStage`.
    sr, vq_hi: the SR `LoadedStage` and its tokenizer, or None for base-only sampling.
    rng_impl: PRNG implementation of the sampling keys (None = JAX's default threefry;
      'rbg' is cheaper to compile and run, with different random streams).
  """

  def __init__(self, sampling, text_encoder, vq_lo, base: LoadedStage,
               sr: Optional[LoadedStage] = None, vq_hi=None, *, rng_impl: Optional[str] = None):
    self.sampling = sampling
    self.rng_impl = rng_impl
    self.text_encoder = text_encoder
    self.vq_lo, self.vq_hi = vq_lo, vq_hi
    self.base, self.sr = base, sr
    self.config = None  # the sampling config, when built from one
    self._check()

  @classmethod
  def from_config(cls, config, workdir: Optional[str] = None, *,
                  rng_impl: Optional[str] = None, text_encoder_params=None,
                  mesh: Optional[Mesh] = None) -> "Pipeline":
    """Loads every stage `config.pipeline` names; empty stage workdirs use WORKDIR/<stage>.

    `text_encoder_params` replace the weights `pipeline.text_encoder` names (a bundle's copy).
    `mesh`: this process's devices to run on (parameters replicated, batches split over the
    `data` axis; batch sizes must then divide by its size); default: the first local device.
    The pipeline keeps `config` (its `sampling` section is `pipe.sampling`).
    """
    p = config.pipeline
    mesh = single_device_mesh() if mesh is None else mesh
    use_sr = bool(p.sr.config)
    # Checkpoints first: a missing one should fail before T5 is loaded.
    base = _replicated(load_transformer(p.base, "base", workdir), mesh)
    sr = _replicated(load_transformer(p.sr, "sr", workdir), mesh) if use_sr else None
    vq_lo = load_vq(p.vq_lo, "vq_lo", workdir, mesh)
    vq_hi = None
    if use_sr:
      if not p.vq_hi.config and not p.vq_hi.workdir:
        raise ValueError("pipeline.sr is set but pipeline.vq_hi is empty: give the tokenizer "
                         "of the SR tokens, or disable SR with --config.pipeline.sr.config=''")
      vq_hi = load_vq(p.vq_hi, "vq_hi", workdir, mesh)
    text_encoder = TextEncoder.from_config(p.text_encoder, mesh=mesh,
                                           params=text_encoder_params)
    if text_encoder.tokenizer is None:
      raise ValueError("pipeline.text_encoder.spiece_model is empty: give the sentencepiece "
                       "model the training shards were precomputed with (T5's spiece.model)")
    pipe = cls(config.sampling, text_encoder, vq_lo, base, sr, vq_hi, rng_impl=rng_impl)
    pipe.config = config
    return pipe

  @classmethod
  def from_workdirs(cls, base: str, *, sr: str = "", vq_lo: str = "", vq_hi: str = "",
                    spiece_model: str = "", rng_impl: Optional[str] = None) -> "Pipeline":
    """The cascade of trained stage workdirs, with no config file (muse_jax/sampling/chain.py:
    the text encoder and tokenizers follow the base stage's precompute unless given)."""
    config = chain.pipeline_config(base, sr=sr, vq_lo=vq_lo, vq_hi=vq_hi,
                                   spiece_model=spiece_model)
    return cls.from_config(config, rng_impl=rng_impl)

  @classmethod
  def from_bundle(cls, path: str, *, rng_impl: Optional[str] = None) -> "Pipeline":
    """The cascade of a pipeline bundle (`python -m muse_jax.export --pipeline=DIR`), with its
    sampling defaults; every file's sha256 and every stage's keys and shapes are checked
    against its manifest first (muse_jax/sampling/bundle.py)."""
    config, text_encoder_params, _ = bundle.read_bundle(path)
    return cls.from_config(config, rng_impl=rng_impl, text_encoder_params=text_encoder_params)

  # --- shapes ------------------------------------------------------------------------------

  def _check(self):
    b = self.base.model
    d = int(self.text_encoder.config.d_model)
    max_len = int(getattr(self.text_encoder, "max_length", b.text_length))
    stages = [self.base] + ([self.sr] if self.sr is not None else [])
    for s in stages:
      if int(s.model.text_dim) != d:
        raise ValueError(f"pipeline.{s.name}: model.text_dim={s.model.text_dim} but the text "
                         f"encoder outputs {d}-d embeddings; use the encoder it was trained on")
      if max_len > int(s.model.text_length):
        raise ValueError(f"pipeline.text_encoder.max_length={max_len} exceeds "
                         f"pipeline.{s.name} model.text_length={s.model.text_length}")
    if self.vq_lo.cfg.codebook_size != int(b.codebook_size):
      raise ValueError(f"vq_lo has {self.vq_lo.cfg.codebook_size} codes but the base model "
                       f"{b.codebook_size}")
    if self.sr is not None:
      s = self.sr.model
      if self.vq_hi is None:
        raise ValueError("an SR stage needs its tokenizer (vq_hi)")
      if int(s.lowres_grid_size) != int(b.grid_size):
        raise ValueError(f"sr model.lowres_grid_size={s.lowres_grid_size} but the base model "
                         f"makes {b.grid_size}x{b.grid_size} tokens")
      if int(s.codebook_size) != int(b.codebook_size):
        raise ValueError(f"sr codebook_size={s.codebook_size} differs from base "
                         f"{b.codebook_size}; the SR model reads the base tokens")
      if self.vq_hi.cfg.codebook_size != int(s.codebook_size):
        raise ValueError(f"vq_hi has {self.vq_hi.cfg.codebook_size} codes but the SR model "
                         f"{s.codebook_size}")

  @property
  def lo_size(self) -> int:
    """Image side of the base stage (grid x tokenizer factor), e.g. 256."""
    return self.base.grid * self.vq_lo.downsample_factor

  @property
  def hi_size(self) -> Optional[int]:
    return None if self.sr is None else self.sr.grid * self.vq_hi.downsample_factor

  @property
  def image_size(self) -> int:
    """Side of the images this pipeline makes and edits."""
    return self.lo_size if self.sr is None else self.hi_size

  # --- text --------------------------------------------------------------------------------

  def encode_text(self, prompts: Sequence[str]) -> tuple[jax.Array, jax.Array]:
    """Prompts -> (embeddings [B, S, D] float32, valid lengths [B] int32).

    S = the base model's text_length (zero-padded past the encoder's max_length; `run_stage`
    pads again for an SR stage with a longer text_length).
    """
    if isinstance(prompts, str):
      prompts = [prompts]
    emb, mask = self.text_encoder.encode(list(prompts))
    emb = jnp.asarray(emb, jnp.float32)
    length = jnp.sum(jnp.asarray(mask), axis=-1).astype(jnp.int32)
    return _pad_text((emb, length), int(self.base.model.text_length))

  def null_text(self, batch: int) -> tuple[jax.Array, jax.Array]:
    """The null condition: zero embeddings with text_len 0."""
    m = self.base.model
    return (jnp.zeros((batch, int(m.text_length), int(m.text_dim)), jnp.float32),
            jnp.zeros((batch,), jnp.int32))

  def conditions(self, prompts, negative_prompt: Optional[str] = None):
    """(cond, uncond) text pairs; a non-empty negative prompt replaces the null condition."""
    cond = self.encode_text(prompts)
    batch = cond[0].shape[0]
    if negative_prompt is None:
      negative_prompt = str(self.sampling.get("negative_prompt", "") or "")
    if negative_prompt:
      emb, length = self.encode_text([negative_prompt])
      uncond = (jnp.broadcast_to(emb, (batch,) + emb.shape[1:]),
                jnp.broadcast_to(length, (batch,)))
    else:
      uncond = self.null_text(batch)
    return cond, uncond

  # --- jitted stages -----------------------------------------------------------------------

  def options(self, stage: str, mode: str) -> dict:
    """Static sampler options from the `sampling` section: decode or mask-free editing."""
    if mode == "decode":
      return parallel_decode.decode_options(self.sampling, stage)
    return editing.mask_free_options(self.sampling)

  def _fn(self, stage: str, mode: str):
    loaded = getattr(self, stage)
    return stage_fns.stage_fn(loaded.model_def, stage, mode, self.options(stage, mode),
                              loaded.mask_id)

  def _keys(self, seed: int):
    key = (jax.random.key(seed) if self.rng_impl is None else
           jax.random.key(seed, impl=self.rng_impl))
    return jax.random.split(key)

  def run_stage(self, stage: str, mode: str, tokens, mask, cond, uncond, key, tokens_lo=None):
    """One transformer stage on [B, T] tokens.

    mode 'decode': regenerate where mask is True (all True = text-to-image), keep the rest.
    mode 'maskfree': mask-free editing, resampling only where mask is True.
    """
    loaded = getattr(self, stage)
    tokens = jnp.asarray(tokens, jnp.int32)
    mask = jnp.asarray(mask, bool)
    length = int(loaded.model.text_length)  # each stage gets text padded to its own length
    cond, uncond = (_pad_text(c, length) for c in (cond, uncond))
    fn = self._fn(stage, mode)
    out = fn(loaded.params, tokens, mask, cond[0], cond[1], uncond[0], uncond[1], key,
             None if tokens_lo is None else jnp.asarray(tokens_lo, jnp.int32))
    return out

  def decode_tokens(self, tokens_lo, tokens_hi=None) -> np.ndarray:
    """VQ-decode the last stage's tokens -> float32 images [B, H, W, 3] in [0, 1]."""
    if tokens_hi is not None:
      g = self.sr.grid
      ids = np.asarray(tokens_hi).reshape(-1, g, g)
      return np.asarray(self.vq_hi.decode(ids))
    g = self.base.grid
    return np.asarray(self.vq_lo.decode(np.asarray(tokens_lo).reshape(-1, g, g)))

  # --- public API --------------------------------------------------------------------------

  def generate(self, prompts: Sequence[str], *, negative_prompt: Optional[str] = None,
               seed: int = 0) -> Result:
    """Text-to-image: one image per prompt."""
    cond, uncond = self.conditions(prompts, negative_prompt)
    batch = cond[0].shape[0]
    k_lo, k_hi = self._keys(seed)
    t_lo = self.base.grid ** 2
    lo = self.run_stage("base", "decode", jnp.full((batch, t_lo), self.base.mask_id),
                        jnp.ones((batch, t_lo), bool), cond, uncond, k_lo)
    hi = None
    if self.sr is not None:
      t_hi = self.sr.grid ** 2
      hi = self.run_stage("sr", "decode", jnp.full((batch, t_hi), self.sr.mask_id),
                          jnp.ones((batch, t_hi), bool), cond, uncond, k_hi, tokens_lo=lo)
    return self._result(lo, hi)

  def encode_image(self, images) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Images at `image_size` -> (low-res tokens [B, T_lo], high-res tokens [B, T_hi] or None).

    The base tokenizer sees the image downsampled to `lo_size` (Muse Sec. 3.3.1).
    """
    x = as_float_images(images)
    if x.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"edit images must be {self.image_size}x{self.image_size}, got "
                       f"{x.shape[1]}x{x.shape[2]}; resize them first (the CLI does)")
    lo = np.asarray(self.vq_lo.encode(resize_images(x, self.lo_size))).reshape(x.shape[0], -1)
    hi = None
    if self.sr is not None:
      hi = np.asarray(self.vq_hi.encode(x)).reshape(x.shape[0], -1)
    return lo, hi

  def token_masks(self, mask, batch: int) -> tuple[jax.Array, Optional[jax.Array]]:
    """Pixel mask [H, W] / [B, H, W] (True = regenerate) -> token masks [B, T] per grid."""
    m = as_bool_masks(mask, batch)
    lo = editing.pixel_mask_to_token_mask(m, self.base.grid).reshape(batch, -1)
    hi = None
    if self.sr is not None:
      hi = editing.pixel_mask_to_token_mask(m, self.sr.grid).reshape(batch, -1)
    return lo, hi

  def inpaint(self, images, mask, prompts: Sequence[str], *,
              negative_prompt: Optional[str] = None, seed: int = 0) -> Result:
    """Regenerates the masked region (True/white) of images at `image_size` (Sec. 3.3.1).

    Low-res tokens are inpainted by the base model, then high-res tokens by the SR model
    conditioned on them; tokens outside the mask are kept exactly at both resolutions.
    """
    x = as_float_images(images)
    prompts = self._prompts_for(prompts, x.shape[0])
    cond, uncond = self.conditions(prompts, negative_prompt)
    tokens_lo, tokens_hi = self.encode_image(x)
    mask_lo, mask_hi = self.token_masks(mask, x.shape[0])
    k_lo, k_hi = self._keys(seed)
    lo = self.run_stage("base", "decode", tokens_lo, mask_lo, cond, uncond, k_lo)
    hi = None
    if self.sr is not None:
      hi = self.run_stage("sr", "decode", tokens_hi, mask_hi, cond, uncond, k_hi, tokens_lo=lo)
    return self._result(lo, hi)

  def outpaint(self, images, keep_box: Sequence[int], prompts: Sequence[str], *,
               negative_prompt: Optional[str] = None, seed: int = 0) -> Result:
    """Regenerates everything outside keep_box = (top, left, bottom, right) in pixels."""
    size = self.image_size
    mask = np.asarray(editing.outpaint_pixel_mask(size, size, keep_box))
    return self.inpaint(images, mask, prompts, negative_prompt=negative_prompt, seed=seed)

  def mask_free_edit(self, images, prompts: Sequence[str], *, mask=None,
                     negative_prompt: Optional[str] = None, seed: int = 0) -> Result:
    """Mask-free editing towards `prompts` (Sec. 3.3.2): base tokens first, then SR tokens.

    `mask` (optional, True = editable) restricts which tokens may change.
    """
    x = as_float_images(images)
    batch = x.shape[0]
    prompts = self._prompts_for(prompts, batch)
    cond, uncond = self.conditions(prompts, negative_prompt)
    tokens_lo, tokens_hi = self.encode_image(x)
    if mask is None:
      mask_lo = np.ones_like(tokens_lo, bool)
      mask_hi = None if tokens_hi is None else np.ones_like(tokens_hi, bool)
    else:
      mask_lo, mask_hi = self.token_masks(mask, batch)
    k_lo, k_hi = self._keys(seed)
    lo = self.run_stage("base", "maskfree", tokens_lo, mask_lo, cond, uncond, k_lo)
    hi = None
    if self.sr is not None:
      hi = self.run_stage("sr", "maskfree", tokens_hi, mask_hi, cond, uncond, k_hi,
                          tokens_lo=lo)
    return self._result(lo, hi)

  # --- helpers -----------------------------------------------------------------------------

  @staticmethod
  def _prompts_for(prompts, batch: int) -> list[str]:
    if isinstance(prompts, str):
      prompts = [prompts]
    prompts = list(prompts)
    if len(prompts) == 1 and batch > 1:
      prompts = prompts * batch
    if len(prompts) != batch:
      raise ValueError(f"{len(prompts)} prompts for {batch} images; give one or one per image")
    return prompts

  def _result(self, lo, hi) -> Result:
    images = self.decode_tokens(lo, hi)
    return Result(images=images, tokens_lo=np.asarray(lo),
                  tokens_hi=None if hi is None else np.asarray(hi))


def _replicated(stage: LoadedStage, mesh: Mesh) -> LoadedStage:
  if mesh.size == 1:
    return stage
  return dataclasses.replace(stage, params=jax.device_put(stage.params,
                                                          NamedSharding(mesh, P())))


def _pad_text(text_and_len, length: int):
  emb, text_len = text_and_len
  if emb.shape[1] < length:
    emb = jnp.pad(emb, ((0, 0), (0, length - emb.shape[1]), (0, 0)))
  return emb, text_len
