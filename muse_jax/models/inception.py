"""Inception-v3 pool features for FID (Flax NNX, NHWC, float32).

The network is torchvision's `Inception3` up to its final average pool: the 2048-d output of
`avgpool` (the "pool3" features every FID implementation compares). Attribute names equal
torchvision's (`Conv2d_1a_3x3`, `Mixed_5b.branch1x1`, ...), so parameter paths map onto its
state-dict keys by renaming leaves only (`muse_jax.weights.inception`).

  BasicConv2d: conv (no bias) -> BatchNorm (inference: running statistics, eps = 1e-3) -> ReLU
  stem:  Conv2d_1a_3x3 (stride 2) -> 2a -> 2b -> maxpool 3/2 -> 3b (1x1) -> 4a -> maxpool 3/2
  Mixed_5b..5d InceptionA, 6a InceptionB, 6b..6e InceptionC, 7a InceptionD, 7b..7c InceptionE
  pool: mean over H and W -> [B, 2048]

Two variants (`variant=`), identical in parameters, differing only in the pooling branch:
  "torchvision": `torchvision.models.Inception3` as built with `transform_input=False`; every
     branch pool is a 3x3/1 average with zero padding counted (`count_include_pad=True`).
  "fid": the network of TensorFlow's FID (pytorch-fid / clean-fid `FIDInceptionA/C/E_1/E_2`):
     Mixed_5b..5d, 6b..6e and 7b average without counting the padding
     (`count_include_pad=False`, TensorFlow's behaviour) and Mixed_7c's branch pool is a
     3x3/1 *max* pool. Mixed_6a/7a (stride-2 max pools, no padding) are unchanged.

Input: NHWC float32 in [-1, 1] (`muse_jax.models.inception_preprocess.preprocess`), at least
75 x 75 pixels (the smallest input whose stride-2 stages leave a non-empty map). Convolutions
run at `Precision.HIGHEST` so that GPUs do not use TF32 for them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from muse_jax.models import layers as L

VARIANTS = ("fid", "torchvision")
BN_EPS = 1e-3
INPUT_SIZE = 299
MIN_SIZE = 75
FEATURE_DIM = 2048
KERNEL_AXES = ("conv_h", "conv_w", "conv_in", "conv_out")


def _pair(v):
  return (v, v) if isinstance(v, int) else tuple(v)


class Conv(nnx.Module):
  """Bias-free 2-D convolution, HWIO kernel, explicit symmetric padding (as torch's Conv2d)."""

  def __init__(self, cin: int, cout: int, kernel, stride: int, padding, *, rngs: nnx.Rngs):
    kh, kw = _pair(kernel)
    ph, pw = _pair(padding)
    self.stride, self.padding = stride, ((ph, ph), (pw, pw))
    init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                                in_axis=(0, 1, 2), out_axis=3)
    self.kernel = L.param(rngs, init, (kh, kw, cin, cout), KERNEL_AXES)

  def __call__(self, x):
    return jax.lax.conv_general_dilated(
        x, self.kernel[...], (self.stride, self.stride), self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)


class BatchNorm(nnx.Module):
  """Inference BatchNorm: (x - mean) / sqrt(var + eps) * scale + bias with stored statistics.

  The running statistics are `nnx.Param`s (never updated here) so that the model is a plain
  parameter tree for `functionalize`.
  """

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    ones, zeros = jax.nn.initializers.ones, jax.nn.initializers.zeros
    self.scale = L.param(rngs, ones, (channels,), ("conv_out",))
    self.bias = L.param(rngs, zeros, (channels,), ("conv_out",))
    self.mean = L.param(rngs, zeros, (channels,), ("conv_out",))
    self.var = L.param(rngs, ones, (channels,), ("conv_out",))

  def __call__(self, x):
    gain = self.scale[...] * jax.lax.rsqrt(self.var[...] + BN_EPS)
    return (x - self.mean[...]) * gain + self.bias[...]


class BasicConv2d(nnx.Module):
  """conv -> BatchNorm -> ReLU (torchvision's `BasicConv2d`)."""

  def __init__(self, cin, cout, kernel, *, rngs, stride=1, padding=0):
    self.conv = Conv(cin, cout, kernel, stride, padding, rngs=rngs)
    self.bn = BatchNorm(cout, rngs=rngs)

  def __call__(self, x):
    return jax.nn.relu(self.bn(self.conv(x)))


def max_pool(x, size: int, stride: int, pad: int = 0):
  """Max over size x size windows; padding never wins (it is -inf, as in torch)."""
  p = ((0, 0), (pad, pad), (pad, pad), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, size, size, 1),
                               (1, stride, stride, 1), p)


def branch_pool(x, kind: str):
  """The 3x3 stride-1 pad-1 pool in front of a block's `branch_pool` conv.

  avg: sum / 9 (zeros of the padding counted); avg_valid: sum / number of in-image pixels
  (4 at a corner, 6 on an edge); max: max with -inf padding.
  """
  if kind == "max":
    return max_pool(x, 3, 1, 1)
  p = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), p)
  if kind == "avg":
    return total / 9.0
  if kind != "avg_valid":
    raise ValueError(f"branch pool {kind!r}")
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), p)
  return total / count


class InceptionA(nnx.Module):

  def __init__(self, cin, pool_features, pool, *, rngs):
    self.pool = pool
    self.branch1x1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch5x5_1 = BasicConv2d(cin, 48, 1, rngs=rngs)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
    self.branch_pool = BasicConv2d(cin, pool_features, 1, rngs=rngs)

  def __call__(self, x):
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(branch_pool(x, self.pool))
    return jnp.concatenate([self.branch1x1(x), b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):

  def __init__(self, cin, *, rngs):
    self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([self.branch3x3(x), b3, max_pool(x, 3, 2)], axis=-1)


class InceptionC(nnx.Module):

  def __init__(self, cin, c7, pool, *, rngs):
    self.pool = pool
    row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
    self.branch1x1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch7x7_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
    self.branch7x7_2 = BasicConv2d(c7, c7, rngs=rngs, **row)
    self.branch7x7_3 = BasicConv2d(c7, 192, rngs=rngs, **col)
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, rngs=rngs, **col)
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, rngs=rngs, **row)
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, rngs=rngs, **col)
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, rngs=rngs, **row)
    self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

  def __call__(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    d = x
    for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                  self.branch7x7dbl_4, self.branch7x7dbl_5):
      d = layer(d)
    bp = self.branch_pool(branch_pool(x, self.pool))
    return jnp.concatenate([self.branch1x1(x), b7, d, bp], axis=-1)


class InceptionD(nnx.Module):

  def __init__(self, cin, *, rngs):
    self.branch3x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return jnp.concatenate([b3, b7, max_pool(x, 3, 2)], axis=-1)


class InceptionE(nnx.Module):

  def __init__(self, cin, pool, *, rngs):
    self.pool = pool
    self.branch1x1 = BasicConv2d(cin, 320, 1, rngs=rngs)
    self.branch3x3_1 = BasicConv2d(cin, 384, 1, rngs=rngs)
    self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3_1(x)
    d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bp = self.branch_pool(branch_pool(x, self.pool))
    return jnp.concatenate([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                            self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), bp], axis=-1)


def block_pools(variant: str) -> dict[str, str]:
  """Branch-pool kind of every Mixed block with one (see the module docstring)."""
  if variant not in VARIANTS:
    raise ValueError(f"inception variant must be one of {VARIANTS}, got {variant!r}")
  names = ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
           "Mixed_7b", "Mixed_7c")
  if variant == "torchvision":
    return dict.fromkeys(names, "avg")
  return {**dict.fromkeys(names, "avg_valid"), "Mixed_7c": "max"}


class InceptionV3(nnx.Module):
  """images [B, H, W, 3] float32 in [-1, 1] (H, W >= 75) -> pool features [B, 2048] float32."""

  def __init__(self, variant: str = "fid", *, rngs: nnx.Rngs):
    pool = block_pools(variant)
    self.variant = variant
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
    self.Mixed_5b = InceptionA(192, 32, pool["Mixed_5b"], rngs=rngs)
    self.Mixed_5c = InceptionA(256, 64, pool["Mixed_5c"], rngs=rngs)
    self.Mixed_5d = InceptionA(288, 64, pool["Mixed_5d"], rngs=rngs)
    self.Mixed_6a = InceptionB(288, rngs=rngs)
    self.Mixed_6b = InceptionC(768, 128, pool["Mixed_6b"], rngs=rngs)
    self.Mixed_6c = InceptionC(768, 160, pool["Mixed_6c"], rngs=rngs)
    self.Mixed_6d = InceptionC(768, 160, pool["Mixed_6d"], rngs=rngs)
    self.Mixed_6e = InceptionC(768, 192, pool["Mixed_6e"], rngs=rngs)
    self.Mixed_7a = InceptionD(768, rngs=rngs)
    self.Mixed_7b = InceptionE(1280, pool["Mixed_7b"], rngs=rngs)
    self.Mixed_7c = InceptionE(2048, pool["Mixed_7c"], rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(f"InceptionV3 takes [B, H, W, 3] with H, W >= {MIN_SIZE}, got {x.shape}")
    x = x.astype(jnp.float32)
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(max_pool(x, 3, 2)))
    x = max_pool(x, 3, 2)
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                  self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                  self.Mixed_7c):
      x = block(x)
    return jnp.mean(x, axis=(1, 2))
