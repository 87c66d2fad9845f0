"""StyleGAN-style discriminator for VQGAN training (as in MaskGIT/Muse's tokenizer training).

  image [B, S, S, 3] -> conv3x3 -> leaky_relu
    -> len(channel_multipliers) residual blocks, each halving the resolution:
         h = lrelu(conv3x3(x)); h = blur+stride-2; h = lrelu(conv3x3(h))
         skip = conv1x1(blur+stride-2(x))  (no bias);  out = (h + skip) / sqrt(2)
    -> [optional minibatch standard deviation channel (StyleGAN), group size `mbstd_group`]
    -> conv3x3 -> lrelu -> flatten -> dense -> lrelu -> dense(1)  => one logit per image

The blur is the [1, 3, 3, 1] binomial filter (StyleGAN's anti-aliased downsampling). No
normalisation layers, so there is no batch state. Leaky ReLU slope 0.2. The final spatial size
is image_size / 2**num_blocks, so the discriminator is built for one `image_size`.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from muse_jax.models import layers as L
from muse_jax.models.vqgan import Conv, ACT
from muse_jax.parallel.sharding import constrain


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
  image_size: int = 256
  base_channels: int = 128
  channel_multipliers: tuple[int, ...] = (2, 4, 4, 4, 4)
  max_channels: int = 512
  mbstd_group: int = 4   # 0 turns the minibatch-stddev feature off
  in_channels: int = 3
  dtype: str = "bfloat16"
  param_dtype: str = "float32"

  @classmethod
  def from_config(cls, cfg) -> "DiscriminatorConfig":
    d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(d) - names)
    if extra:
      raise ValueError(f"discriminator config: unknown keys {extra}; valid: {sorted(names)}")
    if "channel_multipliers" in d:
      d["channel_multipliers"] = tuple(d["channel_multipliers"])
    out = cls(**d)
    if out.image_size % (2 ** len(out.channel_multipliers)):
      raise ValueError(f"discriminator.image_size={out.image_size} must be divisible by "
                       f"2**len(channel_multipliers)={2 ** len(out.channel_multipliers)}")
    return out

  @property
  def precision(self):
    return L.Precision.from_names(self.dtype, self.param_dtype)

  def channels(self, i: int) -> int:
    return min(self.base_channels * self.channel_multipliers[i], self.max_channels)


def blur_downsample(x: jax.Array) -> jax.Array:
  """Depthwise [1,3,3,1]x[1,3,3,1]/64 blur, then stride 2 (output H/2 x W/2)."""
  c = x.shape[-1]
  k = jnp.array([1.0, 3.0, 3.0, 1.0], x.dtype)
  k2 = (k[:, None] * k[None, :]) / 64.0
  kernel = jnp.tile(k2[:, :, None, None], (1, 1, 1, c))  # HWIO with feature_group_count=c
  return jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=c)


def minibatch_stddev(x: jax.Array, group: int) -> jax.Array:
  """Append the mean (over features) std-dev across a group of examples as one channel."""
  b, h, w, c = x.shape
  g = math.gcd(group, b)
  y = x.astype(jnp.float32).reshape(g, b // g, h, w, c)
  std = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)                 # [B/g, H, W, C]
  feat = jnp.mean(std, axis=(1, 2, 3))                      # [B/g]
  feat = jnp.tile(feat, g)[:, None, None, None]             # example i -> group member i % (B/g)
  feat = jnp.broadcast_to(feat, (b, h, w, 1)).astype(x.dtype)
  return jnp.concatenate([x, feat], axis=-1)


class ResBlock(nnx.Module):

  def __init__(self, cin: int, cout: int, precision, *, rngs: nnx.Rngs):
    self.conv1 = Conv(cin, cin, 3, rngs=rngs, precision=precision)
    self.conv2 = Conv(cin, cout, 3, rngs=rngs, precision=precision)
    self.skip = Conv(cin, cout, 1, rngs=rngs, precision=precision, use_bias=False)

  def __call__(self, x):
    h = jax.nn.leaky_relu(self.conv1(x), 0.2)
    h = jax.nn.leaky_relu(self.conv2(blur_downsample(h)), 0.2)
    s = self.skip(blur_downsample(x))
    return constrain((h + s) * (1.0 / math.sqrt(2.0)), ACT)


class Discriminator(nnx.Module):

  def __init__(self, cfg: DiscriminatorConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    p = cfg.precision
    c0 = cfg.base_channels
    self.conv_in = Conv(cfg.in_channels, c0, 3, rngs=rngs, precision=p)
    chans = [c0] + [cfg.channels(i) for i in range(len(cfg.channel_multipliers))]
    self.blocks = nnx.List([ResBlock(chans[i], chans[i + 1], p, rngs=rngs)
                            for i in range(len(cfg.channel_multipliers))])
    c = chans[-1] + (1 if cfg.mbstd_group > 1 else 0)
    self.conv_out = Conv(c, chans[-1], 3, rngs=rngs, precision=p)
    s = cfg.image_size // (2 ** len(cfg.channel_multipliers))
    self.dense = L.DenseGeneral((s * s * chans[-1],), (chans[-1],), in_axes=(None,),
                                out_axes=(None,), rngs=rngs, precision=p, use_bias=True)
    self.logit = L.DenseGeneral((chans[-1],), (1,), in_axes=(None,), out_axes=(None,),
                                rngs=rngs, precision=p, use_bias=True)

  def __call__(self, images: jax.Array) -> jax.Array:
    """images [B, S, S, C] (model pixel range) -> logits [B] (fp32)."""
    if images.shape[1:3] != (self.cfg.image_size,) * 2:
      raise ValueError(f"discriminator built for {self.cfg.image_size}px, got {images.shape}")
    x = jax.nn.leaky_relu(self.conv_in(images), 0.2)
    for blk in self.blocks:
      x = blk(x)
    if self.cfg.mbstd_group > 1:
      x = minibatch_stddev(x, self.cfg.mbstd_group)
    x = jax.nn.leaky_relu(self.conv_out(x), 0.2)
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.leaky_relu(self.dense(x), 0.2)
    return self.logit(x)[:, 0].astype(jnp.float32)
