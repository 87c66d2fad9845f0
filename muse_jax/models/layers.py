"""Building blocks shared by every muse_jax model (Flax NNX).

Conventions (docs/design.md explains the sharding):
- Every parameter is created with `param(...)`, which records its *logical* axis names
  (`embed`, `mlp`, `heads`, `kv`, `vocab`, ...) in the variable's `out_sharding` metadata.
  Models never name mesh axes; `muse_jax.parallel.sharding` maps logical names to the mesh
  with rules that live in the config.
- Activations that matter are annotated with `constrain(x, (...logical names...))`, a no-op
  unless a trainer has activated sharding rules.
- Precision: parameters are stored in `param_dtype` (fp32) and cast to the compute `dtype`
  (bf16) inside each matmul. Norms, softmax and losses run in fp32.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from muse_jax.models import fp8 as F
from muse_jax.models import fp8_training
from muse_jax.parallel.sharding import constrain, per_shard

Axes = tuple[str | None, ...]


@dataclasses.dataclass(frozen=True)
class Precision:
  """Where each kind of arithmetic happens. Built from config strings by `from_names`."""
  dtype: jnp.dtype = jnp.float32        # matmul inputs / activations
  param_dtype: jnp.dtype = jnp.float32  # stored parameters
  fp8_training: bool = False            # DenseGeneral in FP8 (muse_jax/models/fp8_training.py)

  @classmethod
  def from_names(cls, dtype: str, param_dtype: str) -> "Precision":
    return cls(jnp.dtype(dtype), jnp.dtype(param_dtype))


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Axes,
          dtype=jnp.float32) -> nnx.Param:
  """A parameter with logical axis names (one per dimension)."""
  if len(axes) != len(shape):
    raise ValueError(f"param of shape {tuple(shape)} needs {len(shape)} axis names, got {axes}")
  return nnx.Param(init(rngs.params(), tuple(shape), dtype),
                   out_sharding=tuple(axes), eager_sharding=False)


def dense_init(fan_in_dims: int = 1):
  """Variance-scaling (fan-in, truncated normal) over the first `fan_in_dims` dims."""
  return jax.nn.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=tuple(range(fan_in_dims)),
      out_axis=-1)


class DenseGeneral(nnx.Module):
  """y = x @ W (+ b) contracting the last `len(in_shape)` dims of x with W's leading dims.

  `in_axes`/`out_axes` are the logical names of W's input and output dims. `fp8=True` (sampling
  only, see muse_jax/models/fp8.py) holds W as e4m3 [prod(out_shape), prod(in_shape)] plus a
  `kernel_scale`, made from a trained kernel by `fp8.quantize_params`.
  """

  def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], *,
               in_axes: Axes, out_axes: Axes, rngs: nnx.Rngs,
               precision: Precision = Precision(), use_bias: bool = False,
               kernel_init=None, fp8: bool = False):
    self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
    self.precision = precision
    self.fp8 = bool(fp8)
    if self.fp8:
      shape = (math.prod(self.out_shape), math.prod(self.in_shape))
      self.kernel = param(rngs, jax.nn.initializers.zeros, shape, (None, None), F.E4M3)
      self.kernel_scale = param(rngs, jax.nn.initializers.ones, (), (), jnp.float32)
    else:
      init = kernel_init or dense_init(len(self.in_shape))
      self.kernel = param(rngs, init, self.in_shape + self.out_shape,
                          tuple(in_axes) + tuple(out_axes), precision.param_dtype)
    self.bias = (param(rngs, jax.nn.initializers.zeros, self.out_shape, tuple(out_axes),
                       precision.param_dtype) if use_bias else None)

  def __call__(self, x: jax.Array, x_bound=None) -> jax.Array:
    """`x_bound` (>= max|x|, e.g. `RMSNorm.bound()`) spares FP8 training a pass over x."""
    dtype = self.precision.dtype
    n_in = len(self.in_shape)
    if x.shape[x.ndim - n_in:] != self.in_shape:
      raise ValueError(f"DenseGeneral expects trailing dims {self.in_shape}, got {x.shape}")
    # The leading (batch) dims are flattened into one: on CPUs, XLA otherwise transposes the
    # GELU gradient in a slow loop fusion for the weight gradient of a [B, T, D] matmul, which
    # slows every CPU demo train step (stage times in `make demo`'s metrics.json); GPU steps are
    # the same either way (python benchmarks/train_step.py --config=configs/base_632m.py;
    # docs/experiments.md).
    lead = x.shape[:x.ndim - n_in]
    if self.fp8:
      w = self.kernel[...]
      y = F.matmul(x.reshape(-1, w.shape[1]), w, self.kernel_scale[...], dtype)
    elif self.precision.fp8_training:
      y = fp8_training.dot(x.reshape((-1,) + self.in_shape).astype(dtype), self.kernel[...],
                           n_in, x_bound)
    else:
      x2 = x.reshape((-1,) + self.in_shape)
      contract = (tuple(range(1, n_in + 1)), tuple(range(n_in)))
      y = jax.lax.dot_general(x2.astype(dtype), self.kernel[...].astype(dtype),
                              (contract, ((), ())))
    if self.bias is not None:
      y = y + self.bias[...].astype(dtype)
    return y.reshape(lead + self.out_shape)


class RMSNorm(nnx.Module):
  """x * rsqrt(mean(x^2) + eps) * scale, computed in fp32; output in the compute dtype.

  `use_scale=False`: no scale (a norm whose gain is folded into the next matmul's kernel).
  """

  def __init__(self, dim: int, *, rngs: nnx.Rngs, axis_name: str = "embed",
               eps: float = 1e-6, precision: Precision = Precision(), use_scale: bool = True):
    self.eps, self.precision = eps, precision
    self.scale = (param(rngs, jax.nn.initializers.ones, (dim,), (axis_name,),
                        precision.param_dtype) if use_scale else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    # On rows flattened to 2-D: the gradient of `scale` is then one column reduction over all
    # rows. Over [B, T, D], XLA on GPUs splits it in two and transposes the fp32 activations for
    # it, which costs kernel time in every train step (python benchmarks/profile_step.py
    # --config=configs/base_632m.py --config.train.batch_size=64; docs/performance.md).
    shape = x.shape
    x32 = x.reshape(-1, shape[-1]).astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    if self.scale is not None:
      y = y * self.scale[...].astype(jnp.float32)
    return y.astype(self.precision.dtype).reshape(shape)

  def bound(self) -> jax.Array:
    """A bound on max|output| that needs no pass over the input: each row x of width D has
    |x_i| / rms(x) <= sqrt(D), so the output is within sqrt(D) * max|scale|."""
    if self.scale is None:
      raise ValueError("RMSNorm.bound needs the norm's scale (use_scale=True)")
    d = self.scale.shape[0]
    return math.sqrt(d) * jnp.max(jnp.abs(self.scale[...].astype(jnp.float32)))


# A Pallas attention operand [B, L, N, H] on each shard: whole sequences, its batch rows and heads.
_SEQUENCES = ("act_batch", None, "act_heads", None)
_PACKED = ("act_batch", None, None, "act_heads", None)  # a packed [B, L, P, N, H] projection


def _pallas_per_shard(fn, arrays, axes, kv_lengths):
  """`fn(*arrays[, kv_lengths])`, a Pallas attention whose output is [B, T, N, H], on each
  device's shard (`per_shard`); `axes` are the arrays' logical axes."""
  if kv_lengths is None:
    return per_shard(fn, arrays, axes, _SEQUENCES)
  return per_shard(fn, (*arrays, kv_lengths), (*axes, ("act_batch",)), _SEQUENCES)


def attention(q, k, v, *, kv_lengths=None, implementation: str = "xla"):
  """Multi-head attention on [B, T, N, H] inputs through `jax.nn.dot_product_attention`.

  `kv_lengths` [B] masks key positions >= length (padding). `implementation` is `xla`,
  `cudnn` (flash attention on NVIDIA GPUs; needs bf16/fp16 and head_dim a multiple of 8),
  `auto` (cudnn on GPUs when those hold, else xla) or `pallas` (see `resolve_attention`).
  """
  impl = resolve_attention(implementation, q.shape[1], k.shape[1], q.shape[-1], q.dtype)
  if impl == "pallas":
    from muse_jax.models import pallas_attention
    return _pallas_per_shard(pallas_attention.attention, (q, k, v), (_SEQUENCES,) * 3,
                             kv_lengths)
  return jax.nn.dot_product_attention(
      q, k, v, key_value_seq_lengths=kv_lengths, implementation=impl)


# Longest query or key sequence that `pallas` attention takes: the Pallas kernel is faster than
# cuDNN at the samplers' short sequences and slower at the SR stage's 4096 tokens on an H200
# (python benchmarks/attention.py; docs/performance.md).
PALLAS_MAX_LENGTH = 1024


def _on_gpu() -> bool:
  return jax.default_backend() == "gpu"


def resolve_attention(implementation: str, q_len: int, kv_len: int, head_dim: int,
                      dtype) -> str:
  """The attention kernel that runs: `xla`, `cudnn` or `pallas`.

  `auto` is cuDNN on GPUs for bf16/fp16 and head_dim % 8 == 0, else XLA. `pallas` is the
  flash kernels of muse_jax/models/pallas_attention.py (forward and backward) on GPUs where
  their shape rules hold and both lengths are <= PALLAS_MAX_LENGTH, else what `auto` picks.
  """
  on_gpu = _on_gpu()
  if implementation == "pallas":
    from muse_jax.models import pallas_attention
    if (on_gpu and max(q_len, kv_len) <= PALLAS_MAX_LENGTH
        and pallas_attention.supported(q_len, kv_len, head_dim, dtype)):
      return "pallas"
    implementation = "auto"
  if implementation == "auto":
    fast = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0
    return "cudnn" if (on_gpu and fast) else "xla"
  if implementation not in ("xla", "cudnn"):
    raise ValueError(f"attention implementation {implementation!r}; choose auto, xla, cudnn "
                     "or pallas")
  return implementation


class MultiHeadAttention(nnx.Module):
  """Self- or cross-attention with head-sharded projections and no biases."""

  def __init__(self, dim: int, num_heads: int, head_dim: int, *, rngs: nnx.Rngs,
               precision: Precision = Precision(), implementation: str = "xla",
               kv_dim: int | None = None, fused_qkv: bool = True, fp8_query: bool = False):
    """`fp8_query`: the projection of `x` (fused q/k/v, or q of a cross-attention) in FP8."""
    self.num_heads, self.head_dim = num_heads, head_dim
    self.implementation = implementation
    self.self_attention = kv_dim is None
    kv_dim = dim if kv_dim is None else kv_dim
    if self.self_attention and fused_qkv:
      self.qkv = DenseGeneral((dim,), (3, num_heads, head_dim), in_axes=("embed",),
                              out_axes=(None, "heads", "kv"), rngs=rngs, precision=precision,
                              fp8=fp8_query)
    else:
      self.qkv = None
      self.q = DenseGeneral((dim,), (num_heads, head_dim), in_axes=("embed",),
                            out_axes=("heads", "kv"), rngs=rngs, precision=precision,
                            fp8=fp8_query)
      self.kv = DenseGeneral((kv_dim,), (2, num_heads, head_dim), in_axes=("embed",),
                             out_axes=(None, "heads", "kv"), rngs=rngs, precision=precision)
    self.out = DenseGeneral((num_heads, head_dim), (dim,), in_axes=("heads", "kv"),
                            out_axes=("embed",), rngs=rngs, precision=precision)

  def project_kv(self, context):
    """Keys and values [B, S, N, H] of `context` (cross-attention only).

    A sampler that attends to the same context at every step computes them once and passes
    them back as `kv=`.
    """
    if self.qkv is not None:
      raise ValueError("project_kv is for cross-attention (a module built with kv_dim)")
    kv = self.kv(context)
    heads = ("act_batch", "act_length", "act_heads", None)
    return constrain(kv[:, :, 0], heads), constrain(kv[:, :, 1], heads)

  def __call__(self, x, context=None, *, kv_lengths=None, kv=None, x_bound=None):
    """Attention of x to itself, to `context`, or to precomputed `kv=(k, v)` (`project_kv`).
    `x_bound`: see `DenseGeneral`."""
    heads = ("act_batch", "act_length", "act_heads", None)
    if self.qkv is not None:
      qkv = self.qkv(x, x_bound)
      t = x.shape[1]
      if resolve_attention(self.implementation, t, t, self.head_dim, qkv.dtype) == "pallas":
        from muse_jax.models import pallas_attention  # reads q, k, v in place: no split copies
        return self.out(_pallas_per_shard(pallas_attention.qkv_attention, (qkv,),
                                          (_PACKED,), None))
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    else:
      q = self.q(x, x_bound)
      if kv is None:
        context = x if context is None else context
        if resolve_attention(self.implementation, x.shape[1], context.shape[1], self.head_dim,
                             q.dtype) == "pallas":
          # reads k and v in place from the kv projection and writes their gradient packed
          from muse_jax.models import pallas_attention
          return self.out(_pallas_per_shard(pallas_attention.kv_attention,
                                            (q, self.kv(context)), (_SEQUENCES, _PACKED),
                                            kv_lengths))
        kv = self.project_kv(context)
      k, v = kv
    q, k, v = (constrain(t, heads) for t in (q, k, v))
    y = attention(q, k, v, kv_lengths=kv_lengths, implementation=self.implementation)
    y = constrain(y, heads)
    return self.out(y)


_GELU_C, _GELU_A = math.sqrt(2.0 / math.pi), 0.044715  # jax.nn.gelu's tanh approximation


@jax.custom_vjp
def gelu_tanh(x):
  """GELU, tanh approximation. Its backward keeps only x and recomputes the tanh in float32:
  autodiff's forward also writes the tanh, one more activation-sized array per layer."""
  return jax.nn.gelu(x, approximate=True)


def _gelu_fwd(x):
  return gelu_tanh(x), x


def _gelu_bwd(x, g):
  xf = x.astype(jnp.float32)
  t = jnp.tanh(_GELU_C * (xf + _GELU_A * xf ** 3))
  d = 0.5 * (1 + t) + 0.5 * xf * (1 - t * t) * _GELU_C * (1 + 3 * _GELU_A * xf * xf)
  return ((g.astype(jnp.float32) * d).astype(x.dtype),)


gelu_tanh.defvjp(_gelu_fwd, _gelu_bwd)


class MLP(nnx.Module):
  """Dense -> GELU(tanh) -> Dense, sharded on the hidden (`mlp`) dimension."""

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs,
               precision: Precision = Precision(), fp8_input: bool = False):
    self.wi = DenseGeneral((dim,), (hidden,), in_axes=("embed",), out_axes=("mlp",),
                           rngs=rngs, precision=precision, fp8=fp8_input)
    self.wo = DenseGeneral((hidden,), (dim,), in_axes=("mlp",), out_axes=("embed",),
                           rngs=rngs, precision=precision)

  def __call__(self, x, x_bound=None):
    h = gelu_tanh(self.wi(x, x_bound))
    h = constrain(h, ("act_batch", "act_length", "act_mlp"))
    return self.wo(h)
