"""The VQGAN image tokenizer (Muse Sec. 2.2), in Flax NNX.

One architecture family, laid out like diffusers' `VQModel` so that open checkpoints (aMUSEd)
load by renaming keys only (`muse_jax.weights.diffusers_vq`):

  image [B, H, W, 3] (NHWC, in the model's `pixel_range`)
    Encoder: conv_in -> down_blocks[i] (`layers_per_block` ResnetBlocks, then a stride-2 conv
             with (0, 1) padding on H and W, except the last block) -> mid_block (2 ResnetBlocks,
             no attention) -> GroupNorm -> SiLU -> conv_out (latent_channels)
    quant_conv (1x1, latent_channels -> codebook_dim)
    quantize: VectorQuantizer (nearest code, straight-through; `muse_jax.models.quantizer`;
              `codebook_norm="l2"` l2-normalises latents and codes first)
    post_quant_conv (1x1, codebook_dim -> latent_channels)
    Decoder: conv_in -> mid_block (2 ResnetBlocks) -> up_blocks[i] over reversed channels
             (`decoder_layers_per_block + 1` ResnetBlocks, then nearest 2x upsample + 3x3 conv,
             except the last block) -> GroupNorm -> SiLU -> conv_out (3 channels)

Patch stem (`patch_size` p > 1; default 1 = none, as in diffusers): the encoder first folds each
p x p pixel block into channels (space-to-depth, [B, H, W, C] -> [B, H/p, W/p, p*p*C]) and the
decoder's conv_out predicts p*p*C channels that are unfolded back (depth-to-space), so the
costly full-resolution levels are replaced by one level at 1/p of the side. The downsampling
factor becomes p * 2^(levels - 1): e.g. p=2 with block_out_channels of 2 levels is an f4.

ResnetBlock: GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> SiLU -> conv3x3, plus a 1x1
`conv_shortcut` when the channel count changes. No attention anywhere (Muse A.2).

Muse's decoder fine-tuning (Sec. 2.5) uses a bigger decoder on the same encoder and codebook:
`decoder_block_out_channels` / `decoder_layers_per_block` set the decoder independently.

Pixels: the network sees images in `pixel_range` ("-1_1" for muse_jax-trained tokenizers, "0_1"
for aMUSEd). `muse_jax.encoders.vq_tokenizer.VQTokenizer` converts to and from [0, 1] for users.
Precision: parameters in `param_dtype`; convolutions in the compute `dtype`; GroupNorm and the
quantizer in fp32.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from muse_jax.models import layers as L, quantizer as Q
from muse_jax.parallel.sharding import constrain

ACT = ("act_batch", None, None, None)
PIXEL_RANGES = ("-1_1", "0_1")


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
  """Architecture of a tokenizer. Build from a ConfigDict with `from_config`."""
  block_out_channels: tuple[int, ...] = (128, 128, 256, 256, 512)
  layers_per_block: int = 2
  decoder_block_out_channels: tuple[int, ...] | None = None  # None: same as the encoder
  decoder_layers_per_block: int | None = None                 # None: same as the encoder
  latent_channels: int = 256
  codebook_size: int = 8192
  codebook_dim: int | None = None                             # None: latent_channels
  codebook_norm: str = "none"   # none | l2 (l2-normalised latents and codes; quantizer.py)
  patch_size: int = 1           # 1 | 2 | 4 ...: space-to-depth stem / depth-to-space head
  norm_groups: int = 32
  norm_eps: float = 1e-6
  in_channels: int = 3
  out_channels: int = 3
  beta: float = 0.25
  pixel_range: str = "-1_1"
  dtype: str = "bfloat16"
  param_dtype: str = "float32"

  def __post_init__(self):
    object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
    if self.decoder_block_out_channels is not None:
      object.__setattr__(self, "decoder_block_out_channels",
                         tuple(int(c) for c in self.decoder_block_out_channels))
    self.validate()

  @classmethod
  def from_config(cls, cfg) -> "VQGANConfig":
    """From a ConfigDict/dict (the `model` section of a vqgan config); unknown keys are errors."""
    d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    d.pop("name", None)
    names = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(d) - names)
    if extra:
      raise ValueError(f"model config: unknown keys {extra}; valid keys are {sorted(names)}")
    return cls(**d)

  @property
  def enc_channels(self) -> tuple[int, ...]:
    return self.block_out_channels

  @property
  def dec_channels(self) -> tuple[int, ...]:
    return self.decoder_block_out_channels or self.block_out_channels

  @property
  def dec_layers(self) -> int:
    return (self.layers_per_block if self.decoder_layers_per_block is None
            else self.decoder_layers_per_block)

  @property
  def embed_dim(self) -> int:
    return self.codebook_dim or self.latent_channels

  @property
  def downsample_factor(self) -> int:
    return self.patch_size * 2 ** (len(self.block_out_channels) - 1)

  def token_grid(self, image_size: int) -> int:
    if image_size % self.downsample_factor:
      raise ValueError(f"image size {image_size} is not divisible by the tokenizer's "
                       f"downsampling factor {self.downsample_factor}")
    return image_size // self.downsample_factor

  @property
  def precision(self) -> L.Precision:
    return L.Precision.from_names(self.dtype, self.param_dtype)

  def validate(self):
    if len(self.dec_channels) != len(self.enc_channels):
      raise ValueError("model.decoder_block_out_channels must have as many levels as "
                       f"model.block_out_channels ({len(self.enc_channels)}), got "
                       f"{self.dec_channels}")
    for name, chans in (("block_out_channels", self.enc_channels),
                        ("decoder_block_out_channels", self.dec_channels)):
      bad = [c for c in chans if c % self.norm_groups]
      if bad:
        raise ValueError(f"model.{name} {chans}: channels {bad} are not divisible by "
                         f"model.norm_groups={self.norm_groups}")
    if self.pixel_range not in PIXEL_RANGES:
      raise ValueError(f"model.pixel_range must be one of {PIXEL_RANGES}, got "
                       f"{self.pixel_range!r}")
    if not isinstance(self.patch_size, int) or self.patch_size < 1:
      raise ValueError(f"model.patch_size must be an integer >= 1, got {self.patch_size!r}")
    if self.codebook_norm not in Q.CODEBOOK_NORMS:
      raise ValueError(f"model.codebook_norm must be one of {Q.CODEBOOK_NORMS}, got "
                       f"{self.codebook_norm!r}")
    if self.codebook_size < 2 or self.layers_per_block < 1 or self.dec_layers < 1:
      raise ValueError("model.codebook_size must be >= 2 and layers_per_block >= 1")


def conv_init():
  return jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                              in_axis=(0, 1, 2), out_axis=3)


class Conv(nnx.Module):
  """2-D convolution on NHWC with an HWIO kernel; padding 'SAME' or explicit pairs."""

  def __init__(self, cin: int, cout: int, kernel: int = 3, *, rngs: nnx.Rngs,
               precision: L.Precision, stride: int = 1, padding: Any = "SAME",
               use_bias: bool = True, kernel_init=None):
    self.stride, self.padding, self.precision = stride, padding, precision
    self.kernel = L.param(rngs, kernel_init or conv_init(), (kernel, kernel, cin, cout),
                          ("conv_h", "conv_w", "conv_in", "conv_out"), precision.param_dtype)
    self.bias = (L.param(rngs, jax.nn.initializers.zeros, (cout,), ("conv_out",),
                         precision.param_dtype) if use_bias else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = self.precision.dtype
    y = jax.lax.conv_general_dilated(
        x.astype(dtype), self.kernel[...].astype(dtype), (self.stride, self.stride),
        self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.bias is not None:
      y = y + self.bias[...].astype(dtype)
    return y


class GroupNorm(nnx.Module):
  """GroupNorm over (H, W, channels-in-group), in fp32; output in the compute dtype."""

  def __init__(self, channels: int, groups: int, *, rngs: nnx.Rngs, precision: L.Precision,
               eps: float = 1e-6):
    self.groups, self.eps, self.precision = groups, eps, precision
    self.scale = L.param(rngs, jax.nn.initializers.ones, (channels,), ("conv_out",),
                         precision.param_dtype)
    self.bias = L.param(rngs, jax.nn.initializers.zeros, (channels,), ("conv_out",),
                        precision.param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    g = x.astype(jnp.float32).reshape(b, h, w, self.groups, c // self.groups)
    mean = jnp.mean(g, axis=(1, 2, 4), keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=(1, 2, 4), keepdims=True)
    g = (g - mean) * jax.lax.rsqrt(var + self.eps)
    y = g.reshape(b, h, w, c) * self.scale[...].astype(jnp.float32) + self.bias[...].astype(
        jnp.float32)
    return y.astype(self.precision.dtype)


class ResnetBlock(nnx.Module):

  def __init__(self, cin: int, cout: int, cfg: VQGANConfig, *, rngs: nnx.Rngs):
    kw = dict(rngs=rngs, precision=cfg.precision)
    self.norm1 = GroupNorm(cin, cfg.norm_groups, eps=cfg.norm_eps, **kw)
    self.conv1 = Conv(cin, cout, 3, **kw)
    self.norm2 = GroupNorm(cout, cfg.norm_groups, eps=cfg.norm_eps, **kw)
    self.conv2 = Conv(cout, cout, 3, **kw)
    self.conv_shortcut = Conv(cin, cout, 1, **kw) if cin != cout else None

  def __call__(self, x):
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    h = self.conv2(jax.nn.silu(self.norm2(h)))
    skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
    return constrain(skip.astype(h.dtype) + h, ACT)


class Downsample(nnx.Module):
  """Stride-2 3x3 conv after zero-padding one row/column at the bottom/right (diffusers)."""

  def __init__(self, ch: int, cfg: VQGANConfig, *, rngs: nnx.Rngs):
    self.conv = Conv(ch, ch, 3, stride=2, padding=((0, 1), (0, 1)), rngs=rngs,
                     precision=cfg.precision)

  def __call__(self, x):
    return self.conv(x)


class Upsample(nnx.Module):
  """Nearest-neighbour 2x upsampling, then a 3x3 conv."""

  def __init__(self, ch: int, cfg: VQGANConfig, *, rngs: nnx.Rngs):
    self.conv = Conv(ch, ch, 3, rngs=rngs, precision=cfg.precision)

  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return self.conv(x)


class DownBlock(nnx.Module):

  def __init__(self, cin, cout, num_layers, downsample, cfg, *, rngs):
    self.resnets = nnx.List([ResnetBlock(cin if i == 0 else cout, cout, cfg, rngs=rngs)
                             for i in range(num_layers)])
    self.downsample = Downsample(cout, cfg, rngs=rngs) if downsample else None

  def __call__(self, x):
    for r in self.resnets:
      x = r(x)
    return self.downsample(x) if self.downsample is not None else x


class UpBlock(nnx.Module):

  def __init__(self, cin, cout, num_layers, upsample, cfg, *, rngs):
    self.resnets = nnx.List([ResnetBlock(cin if i == 0 else cout, cout, cfg, rngs=rngs)
                             for i in range(num_layers)])
    self.upsample = Upsample(cout, cfg, rngs=rngs) if upsample else None

  def __call__(self, x):
    for r in self.resnets:
      x = r(x)
    return self.upsample(x) if self.upsample is not None else x


class MidBlock(nnx.Module):
  """Two ResnetBlocks at the lowest resolution (diffusers' UNetMidBlock2D without attention)."""

  def __init__(self, ch, cfg, *, rngs):
    self.resnets = nnx.List([ResnetBlock(ch, ch, cfg, rngs=rngs) for _ in range(2)])

  def __call__(self, x):
    for r in self.resnets:
      x = r(x)
    return x


def space_to_depth(x: jax.Array, p: int) -> jax.Array:
  """[B, H, W, C] -> [B, H/p, W/p, p*p*C]; channel index (dy * p + dx) * C + c."""
  if p == 1:
    return x
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // p, w // p, p * p * c)


def depth_to_space(x: jax.Array, p: int) -> jax.Array:
  """Inverse of `space_to_depth`: [B, h, w, p*p*C] -> [B, h*p, w*p, C]."""
  if p == 1:
    return x
  b, h, w, cc = x.shape
  c = cc // (p * p)
  x = x.reshape(b, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, w * p, c)


class Encoder(nnx.Module):

  def __init__(self, cfg: VQGANConfig, *, rngs: nnx.Rngs):
    ch = cfg.enc_channels
    kw = dict(rngs=rngs, precision=cfg.precision)
    self.patch_size = cfg.patch_size
    self.conv_in = Conv(cfg.in_channels * cfg.patch_size ** 2, ch[0], 3, **kw)
    self.down_blocks = nnx.List([
        DownBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, i < len(ch) - 1, cfg,
                  rngs=rngs) for i in range(len(ch))])
    self.mid_block = MidBlock(ch[-1], cfg, rngs=rngs)
    self.conv_norm_out = GroupNorm(ch[-1], cfg.norm_groups, eps=cfg.norm_eps, **kw)
    self.conv_out = Conv(ch[-1], cfg.latent_channels, 3, **kw)

  def __call__(self, x):
    h = constrain(self.conv_in(space_to_depth(x, self.patch_size)), ACT)
    for blk in self.down_blocks:
      h = blk(h)
    h = self.mid_block(h)
    return self.conv_out(jax.nn.silu(self.conv_norm_out(h)))


class Decoder(nnx.Module):

  def __init__(self, cfg: VQGANConfig, *, rngs: nnx.Rngs):
    ch = cfg.dec_channels
    rev = list(reversed(ch))
    kw = dict(rngs=rngs, precision=cfg.precision)
    self.conv_in = Conv(cfg.latent_channels, ch[-1], 3, **kw)
    self.mid_block = MidBlock(ch[-1], cfg, rngs=rngs)
    self.up_blocks = nnx.List([
        UpBlock(rev[max(i - 1, 0)], rev[i], cfg.dec_layers + 1, i < len(ch) - 1, cfg,
                rngs=rngs) for i in range(len(ch))])
    self.conv_norm_out = GroupNorm(ch[0], cfg.norm_groups, eps=cfg.norm_eps, **kw)
    self.patch_size = cfg.patch_size
    self.conv_out = Conv(ch[0], cfg.out_channels * cfg.patch_size ** 2, 3, **kw)

  def unpatchify(self, y):
    """conv_out's output -> pixels (depth-to-space when patch_size > 1)."""
    return depth_to_space(y, self.patch_size)

  def features(self, z):
    """Everything before the last conv (the adaptive GAN weight differentiates conv_out)."""
    h = constrain(self.conv_in(z), ACT)
    h = self.mid_block(h)
    for blk in self.up_blocks:
      h = blk(h)
    return jax.nn.silu(self.conv_norm_out(h))

  def __call__(self, z):
    return self.unpatchify(self.conv_out(self.features(z)))


class VQGAN(nnx.Module):
  """Encoder + vector quantizer + decoder. Parameter names follow diffusers' VQModel."""

  def __init__(self, cfg: VQGANConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(rngs=rngs, precision=cfg.precision)
    self.encoder = Encoder(cfg, rngs=rngs)
    self.quant_conv = Conv(cfg.latent_channels, cfg.embed_dim, 1, **kw)
    self.quantize = Q.VectorQuantizer(cfg.codebook_size, cfg.embed_dim, beta=cfg.beta,
                                      rngs=rngs, param_dtype=cfg.precision.param_dtype,
                                      norm=cfg.codebook_norm)
    self.post_quant_conv = Conv(cfg.embed_dim, cfg.latent_channels, 1, **kw)
    self.decoder = Decoder(cfg, rngs=rngs)

  def encode_latents(self, images: jax.Array) -> jax.Array:
    """images [B, H, W, C] in `pixel_range` -> pre-quantization latents [B, h, w, D] (fp32)."""
    return self.quant_conv(self.encoder(images)).astype(jnp.float32)

  def encode(self, images: jax.Array) -> jax.Array:
    """images -> token ids [B, h, w] int32."""
    return self.quantize.nearest(self.encode_latents(images))

  def decode_latents(self, quantized: jax.Array) -> jax.Array:
    """Quantized latents [B, h, w, D] -> images [B, H, W, C] (fp32, in `pixel_range`)."""
    return self.decoder(self.post_quant_conv(quantized)).astype(jnp.float32)

  def decode(self, ids: jax.Array) -> jax.Array:
    """Token ids [B, h, w] -> images [B, H, W, C] (fp32, in `pixel_range`, not clipped)."""
    return self.decode_latents(self.quantize.lookup(ids))

  def __call__(self, images: jax.Array) -> tuple[jax.Array, Q.QuantizerOutput]:
    """Reconstruction (straight-through gradients to the encoder) and quantizer outputs."""
    q = self.quantize(self.encode_latents(images))
    return self.decode_latents(q.quantized), q


def num_params(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))


def decoder_param_keys() -> Sequence[str]:
  """Top-level parameter groups that belong to the decoder side (trained in fine-tuning)."""
  return ("post_quant_conv", "decoder")


def finetune_decoder_params(finished: dict, new_init: dict) -> dict:
  """Parameters for Muse's decoder fine-tuning (Sec. 2.5).

  `finished` are the params of a trained tokenizer; `new_init` are freshly initialised params of
  the fine-tuning architecture (same encoder/codebook config, bigger decoder). Returns a tree
  with the encoder, quant_conv and codebook taken from `finished` (they stay frozen) and the
  decoder side (`post_quant_conv`, `decoder`) from `new_init`. Shapes of the frozen part must
  agree; a mismatch raises naming the key.
  """
  out = {}
  for k in new_init:
    if k in decoder_param_keys():
      out[k] = new_init[k]
      continue
    if k not in finished:
      raise ValueError(f"finished tokenizer checkpoint lacks parameter group {k!r}")
    src = jax.tree_util.tree_leaves_with_path(finished[k])
    dst = jax.tree_util.tree_leaves_with_path(new_init[k])
    src_shapes = {jax.tree_util.keystr(p): v.shape for p, v in src}
    for p, v in dst:
      ks = jax.tree_util.keystr(p)
      if ks not in src_shapes or tuple(src_shapes[ks]) != tuple(v.shape):
        raise ValueError(f"decoder fine-tuning: frozen parameter {k}{ks} has shape "
                         f"{src_shapes.get(ks)} in the finished checkpoint but {v.shape} in the "
                         "fine-tuning config; encoder/codebook settings must be identical")
    out[k] = finished[k]
  return out


def trainable_mask(params: dict, decoder_only: bool) -> dict:
  """Pytree of bools: True where a parameter trains (all, or only the decoder side)."""
  return {k: jax.tree.map(lambda _: (not decoder_only) or k in decoder_param_keys(), v)
          for k, v in params.items()}


def to_model_range(images: jax.Array, pixel_range: str) -> jax.Array:
  """[0, 1] float (or uint8) images -> the network's pixel range, fp32."""
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) / 255.0
  images = images.astype(jnp.float32)
  return images * 2.0 - 1.0 if pixel_range == "-1_1" else images


def from_model_range(images: jax.Array, pixel_range: str) -> jax.Array:
  """The network's pixel range -> [0, 1] fp32 (not clipped)."""
  return (images + 1.0) * 0.5 if pixel_range == "-1_1" else images
