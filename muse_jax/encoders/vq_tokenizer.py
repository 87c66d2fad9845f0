"""`VQTokenizer`: the encode/decode API that precompute and sampling use.

  tok = VQTokenizer(cfg, params, mesh)           # or VQTokenizer.from_diffusers(path, mesh)
  ids = tok.encode(images)   # images [B, H, W, 3] in [0, 1] (float) or uint8 [0, 255]
                             #   -> int32 token ids [B, H/f, W/f]
  img = tok.decode(ids)      # ids [B, h, w] -> float32 images [B, h*f, w*f, 3] in [0, 1] (clipped)

Users always see images in [0, 1], NHWC; the conversion to the network's own `pixel_range`
([-1, 1] for muse_jax-trained tokenizers, [0, 1] for aMUSEd) happens inside. Both functions are
jitted once per input shape, with the batch sharded over the mesh's `data` x `fsdp` axes and the
parameters replicated. A batch that does not divide the data-parallel size is padded and the
padding dropped from the result, so any batch size works. Works at any resolution divisible by
the downsampling factor (256 -> 16x16 and 512 -> 32x32 tokens for f16; 512 -> 64x64 for f8).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from muse_jax import paths
from muse_jax.models import vqgan as V
from muse_jax.models.functional import functionalize
from muse_jax.parallel.mesh import data_parallel_size
from muse_jax.weights import diffusers_vq
from muse_jax.workdir.checkpoints import restore_raw_params


class VQTokenizer:
  """Jitted, batch-sharded encode/decode for one tokenizer config and its parameters."""

  def __init__(self, cfg: V.VQGANConfig, params, mesh: Mesh | None = None):
    self.cfg = cfg
    self.model_def, _ = functionalize(lambda r: V.VQGAN(cfg, rngs=r))
    if mesh is None:
      mesh = Mesh(np.asarray(jax.devices()).reshape(-1, 1, 1), ("data", "fsdp", "tensor"))
    self.mesh = mesh
    self._replicated = NamedSharding(mesh, P())
    batch_axes = tuple(a for a in ("data", "fsdp") if a in mesh.shape and mesh.shape[a] > 1)
    self._batch = NamedSharding(mesh, P(batch_axes or None))
    self._dp = data_parallel_size(mesh) if {"data", "fsdp"} <= set(mesh.shape) else 1
    self.params = jax.device_put(params, self._replicated)
    self._encode = jax.jit(self._encode_fn, in_shardings=(self._replicated, self._batch),
                           out_shardings=self._batch)
    self._decode = jax.jit(self._decode_fn, in_shardings=(self._replicated, self._batch),
                           out_shardings=self._batch)

  @classmethod
  def from_diffusers(cls, path: str, mesh: Mesh | None = None, cfg: V.VQGANConfig | None = None,
                     dtype: str | None = None):
    """Load a diffusers VQModel directory/file (aMUSEd) and wrap it. `dtype` sets compute."""
    cfg, params = diffusers_vq.load_diffusers_vq(path, cfg)
    if dtype is not None:
      cfg = V.VQGANConfig(**{**cfg.__dict__, "dtype": dtype})
    return cls(cfg, params, mesh)

  @property
  def downsample_factor(self) -> int:
    return self.cfg.downsample_factor

  def _encode_fn(self, params, images):
    model = self.model_def.bind(params)
    return model.encode(V.to_model_range(images, self.cfg.pixel_range))

  def _decode_fn(self, params, ids):
    model = self.model_def.bind(params)
    out = V.from_model_range(model.decode(ids), self.cfg.pixel_range)
    return jnp.clip(out, 0.0, 1.0)

  def _padded(self, x):
    n = x.shape[0]
    pad = (-n) % self._dp
    if pad:
      x = np.concatenate([np.asarray(x), np.repeat(np.asarray(x)[-1:], pad, axis=0)], axis=0)
    return x, n

  def encode(self, images) -> jax.Array:
    """images [B, H, W, C] in [0, 1] (or uint8) -> int32 ids [B, H/f, W/f]."""
    if images.ndim != 4 or images.shape[-1] != self.cfg.in_channels:
      raise ValueError(f"encode expects NHWC images with {self.cfg.in_channels} channels, got "
                       f"shape {images.shape}")
    for s in images.shape[1:3]:
      self.cfg.token_grid(s)
    x, n = self._padded(images)
    return self._encode(self.params, x)[:n]

  def decode(self, ids) -> jax.Array:
    """ids [B, h, w] in [0, codebook_size) -> float32 images [B, h*f, w*f, C] in [0, 1]."""
    if ids.ndim != 3:
      raise ValueError(f"decode expects token ids [B, h, w], got shape {ids.shape}")
    x, n = self._padded(ids)
    return self._decode(self.params, jnp.asarray(x, jnp.int32))[:n]


def load_vq_params(path: str, cfg: V.VQGANConfig, decoder_only: bool = False,
                   what: str = "finetune.init_from") -> dict:
  """Generator params of a finished tokenizer: a vqgan workdir or a diffusers VQModel.

  For decoder fine-tuning the finished model's own decoder is read from the file's config.json
  when there is one, else assumed to mirror the encoder (the fine-tuned decoder differs).
  """
  if path.endswith(".safetensors") or (
      paths.resolve(path) / "diffusion_pytorch_model.safetensors").exists():
    src_cfg = cfg
    if decoder_only:
      try:
        src_cfg = diffusers_vq.vqgan_config_from_diffusers(
            diffusers_vq.read_diffusers_config(path), pixel_range=cfg.pixel_range,
            dtype=cfg.dtype)
      except FileNotFoundError:
        src_cfg = dataclasses.replace(cfg, decoder_block_out_channels=None,
                                      decoder_layers_per_block=None)
    return diffusers_vq.load_diffusers_vq(path, src_cfg)[1]
  return restore_raw_params(path, what,
                            hint="give a vqgan workdir or a diffusers VQModel")
