"""CLIP (Radford et al., 2021): text and image towers for CLIP score (Flax NNX, float32).

The architecture of transformers' `CLIPModel`; attribute names equal its module names, so a
parameter path maps onto its state-dict key by renaming the leaf (`muse_jax.weights.clip`):

Text tower (`text_model`), ids [B, L] (L <= max_length):
  x = token_embedding[ids] + position_embedding[0..L-1]
  `layers` pre-LN blocks:  x += attn(LN1(x)) with a causal mask (and the padding mask on keys),
                           x += fc2(act(fc1(LN2(x))))
  h = final_layer_norm(x); pooled = h[b, eos_b]
  eos_b: with `eos_token_id=None`, argmax_t ids[b, t] (OpenAI's rule: its end-of-text token has
  the largest id; the first maximum wins); with an id, the first t where ids[b, t] == id (0 if
  none). transformers picks the same way: argmax when the config's `eos_token_id` is 2 (the
  OpenAI checkpoints' config.json), else the first occurrence of `eos_token_id`.
Vision tower (`vision_model`), pixels [B, S, S, 3] NHWC normalised (`clip_preprocess`):
  patches of P x P -> patch_embedding (a conv of stride P without bias, here a dense layer on
  each flattened patch) -> prepend class_embedding -> + position_embedding -> pre_layrnorm
  (sic, transformers' name) -> `layers` pre-LN blocks (no mask) -> post_layernorm(x[:, 0])
Heads: text_projection, visual_projection (no biases); logit_scale (a log temperature).
  logits_per_image = exp(logit_scale) * normalise(E_img) @ normalise(E_txt)^T

Attention: softmax(q k^T / sqrt(head_dim)) v with biases on q, k, v and out projections.
Activations (`hidden_act`): quick_gelu x * sigmoid(1.702 x) (OpenAI CLIP), gelu (erf),
gelu_new / gelu_pytorch_tanh (tanh approximation). LayerNorm eps from the config (1e-5).
Everything is float32. On GPUs call under `jax.default_matmul_precision("highest")` (the
embedding functions of `muse_jax.weights.clip` do) so that matmuls do not run in TF32.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from muse_jax.models.layers import DenseGeneral, param

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


@dataclasses.dataclass(frozen=True)
class TextConfig:
  width: int = 512
  layers: int = 12
  heads: int = 8
  mlp: int = 2048
  vocab_size: int = 49408
  max_length: int = 77
  eos_token_id: int | None = None   # None: pool at argmax(ids) (module docstring)
  act: str = "quick_gelu"
  eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  width: int = 768
  layers: int = 12
  heads: int = 12
  mlp: int = 3072
  image_size: int = 224
  patch_size: int = 32
  act: str = "quick_gelu"
  eps: float = 1e-5

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  text: TextConfig = TextConfig()
  vision: VisionConfig = VisionConfig()
  projection_dim: int = 512

  def __post_init__(self):
    for name, c in (("text", self.text), ("vision", self.vision)):
      if c.width % c.heads:
        raise ValueError(f"CLIP {name} width {c.width} is not a multiple of heads {c.heads}")
      if c.act not in ACTIVATIONS:
        raise ValueError(f"CLIP {name} activation {c.act!r}; choose one of {sorted(ACTIVATIONS)}")
    if self.vision.image_size % self.vision.patch_size:
      raise ValueError(f"CLIP image size {self.vision.image_size} is not a multiple of the "
                       f"patch size {self.vision.patch_size}")


# The published OpenAI sizes (their config.json files; their text config's eos_token_id is 2,
# i.e. argmax pooling) and a tiny one for tests.
CONFIGS: dict[str, CLIPConfig] = {
    "vit_b32": CLIPConfig(TextConfig(), VisionConfig(), projection_dim=512),
    "vit_l14": CLIPConfig(TextConfig(width=768, heads=12, mlp=3072),
                          VisionConfig(width=1024, layers=24, heads=16, mlp=4096, patch_size=14),
                          projection_dim=768),
    "tiny": CLIPConfig(TextConfig(width=32, layers=2, heads=4, mlp=64, vocab_size=1000,
                                  max_length=16),
                       VisionConfig(width=32, layers=2, heads=4, mlp=64, image_size=32,
                                    patch_size=8),
                       projection_dim=24),
}


def get_config(name: str) -> CLIPConfig:
  if name not in CONFIGS:
    raise ValueError(f"unknown CLIP config {name!r}; choose one of {sorted(CONFIGS)}")
  return CONFIGS[name]


def _normal(stddev: float):
  return jax.nn.initializers.normal(stddev)


class Embedding(nnx.Module):
  """A lookup table [num, dim] (transformers' `nn.Embedding`)."""

  def __init__(self, num: int, dim: int, axes, *, rngs: nnx.Rngs):
    self.embedding = param(rngs, _normal(0.02), (num, dim), axes)

  def __call__(self, ids):
    return jnp.take(self.embedding[...], ids, axis=0)


class LayerNorm(nnx.Module):
  """(x - mean) / sqrt(var + eps) * scale + bias over the last dim (biased variance)."""

  def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
    self.eps = eps
    self.scale = param(rngs, jax.nn.initializers.ones, (dim,), ("embed",))
    self.bias = param(rngs, jax.nn.initializers.zeros, (dim,), ("embed",))

  def __call__(self, x):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class Attention(nnx.Module):
  """Multi-head self-attention with biased q, k, v and out projections."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
    hd = width // heads
    kw = dict(rngs=rngs, use_bias=True)
    for name in ("q_proj", "k_proj", "v_proj"):
      setattr(self, name, DenseGeneral((width,), (heads, hd), in_axes=("embed",),
                                       out_axes=("heads", "kv"), **kw))
    self.out_proj = DenseGeneral((heads, hd), (width,), in_axes=("heads", "kv"),
                                 out_axes=("embed",), **kw)

  def __call__(self, x, mask=None):
    """x [B, T, D]; mask broadcastable to [B, heads, T, T] (True = may attend) or None."""
    q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
    y = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    return self.out_proj(y)


class MLP(nnx.Module):

  def __init__(self, width: int, hidden: int, act: str, *, rngs: nnx.Rngs):
    self.act = act
    self.fc1 = DenseGeneral((width,), (hidden,), in_axes=("embed",), out_axes=("mlp",),
                            rngs=rngs, use_bias=True)
    self.fc2 = DenseGeneral((hidden,), (width,), in_axes=("mlp",), out_axes=("embed",),
                            rngs=rngs, use_bias=True)

  def __call__(self, x):
    return self.fc2(ACTIVATIONS[self.act](self.fc1(x)))


class EncoderLayer(nnx.Module):
  """x + attn(LN1(x)), then x + mlp(LN2(x))."""

  def __init__(self, c: TextConfig | VisionConfig, *, rngs: nnx.Rngs):
    self.layer_norm1 = LayerNorm(c.width, c.eps, rngs=rngs)
    self.self_attn = Attention(c.width, c.heads, rngs=rngs)
    self.layer_norm2 = LayerNorm(c.width, c.eps, rngs=rngs)
    self.mlp = MLP(c.width, c.mlp, c.act, rngs=rngs)

  def __call__(self, x, mask=None):
    x = x + self.self_attn(self.layer_norm1(x), mask)
    return x + self.mlp(self.layer_norm2(x))


class Encoder(nnx.Module):

  def __init__(self, c: TextConfig | VisionConfig, *, rngs: nnx.Rngs):
    self.layers = nnx.List([EncoderLayer(c, rngs=rngs) for _ in range(c.layers)])

  def __call__(self, x, mask=None):
    for layer in self.layers:
      x = layer(x, mask)
    return x


class TextEmbeddings(nnx.Module):

  def __init__(self, c: TextConfig, *, rngs: nnx.Rngs):
    self.token_embedding = Embedding(c.vocab_size, c.width, ("vocab", "embed"), rngs=rngs)
    self.position_embedding = Embedding(c.max_length, c.width, (None, "embed"), rngs=rngs)

  def __call__(self, ids):
    return self.token_embedding(ids) + self.position_embedding(jnp.arange(ids.shape[1]))


class TextTransformer(nnx.Module):
  """ids [B, L] int, mask [B, L] (1 = token) or None -> pooled [B, width] (module docstring)."""

  def __init__(self, c: TextConfig, *, rngs: nnx.Rngs):
    self.cfg = c
    self.embeddings = TextEmbeddings(c, rngs=rngs)
    self.encoder = Encoder(c, rngs=rngs)
    self.final_layer_norm = LayerNorm(c.width, c.eps, rngs=rngs)

  def __call__(self, ids, mask=None):
    b, length = ids.shape
    if length > self.cfg.max_length:
      raise ValueError(f"CLIP text length {length} exceeds max_length {self.cfg.max_length}")
    allowed = jnp.tril(jnp.ones((length, length), bool))[None, None]
    if mask is not None:
      allowed = allowed & mask.astype(bool)[:, None, None, :]
    h = self.final_layer_norm(self.encoder(self.embeddings(ids), allowed))
    if self.cfg.eos_token_id is None:
      eos = jnp.argmax(ids, axis=-1)
    else:
      eos = jnp.argmax(ids == self.cfg.eos_token_id, axis=-1)
    return h[jnp.arange(b), eos]


class VisionEmbeddings(nnx.Module):

  def __init__(self, c: VisionConfig, *, rngs: nnx.Rngs):
    self.patch = c.patch_size
    self.class_embedding = param(rngs, _normal(c.width ** -0.5), (c.width,), ("embed",))
    self.patch_embedding = DenseGeneral((c.patch_size, c.patch_size, 3), (c.width,),
                                        in_axes=(None, None, None), out_axes=("embed",),
                                        rngs=rngs)
    self.position_embedding = Embedding(c.num_patches + 1, c.width, (None, "embed"), rngs=rngs)

  def __call__(self, x):
    b, h, w, ch = x.shape
    p = self.patch
    patches = x.reshape(b, h // p, p, w // p, p, ch).transpose(0, 1, 3, 2, 4, 5)
    tokens = self.patch_embedding(patches.reshape(b, -1, p, p, ch))   # row-major patch order
    cls = jnp.broadcast_to(self.class_embedding[...], (b, 1, tokens.shape[-1]))
    return jnp.concatenate([cls, tokens], axis=1) + self.position_embedding.embedding[...]


class VisionTransformer(nnx.Module):
  """pixels [B, S, S, 3] (S = image_size) -> pooled [B, width]."""

  def __init__(self, c: VisionConfig, *, rngs: nnx.Rngs):
    self.cfg = c
    self.embeddings = VisionEmbeddings(c, rngs=rngs)
    self.pre_layrnorm = LayerNorm(c.width, c.eps, rngs=rngs)
    self.encoder = Encoder(c, rngs=rngs)
    self.post_layernorm = LayerNorm(c.width, c.eps, rngs=rngs)

  def __call__(self, pixels):
    s = self.cfg.image_size
    if pixels.ndim != 4 or pixels.shape[1:] != (s, s, 3):
      raise ValueError(f"CLIP vision tower takes [B, {s}, {s}, 3] (NHWC), got {pixels.shape}")
    x = self.encoder(self.pre_layrnorm(self.embeddings(pixels.astype(jnp.float32))))
    return self.post_layernorm(x[:, 0])


class CLIP(nnx.Module):
  """Both towers and their projections (module docstring)."""

  def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.text_model = TextTransformer(cfg.text, rngs=rngs)
    self.vision_model = VisionTransformer(cfg.vision, rngs=rngs)
    self.text_projection = DenseGeneral((cfg.text.width,), (cfg.projection_dim,),
                                        in_axes=("embed",), out_axes=(None,), rngs=rngs)
    self.visual_projection = DenseGeneral((cfg.vision.width,), (cfg.projection_dim,),
                                          in_axes=("embed",), out_axes=(None,), rngs=rngs)
    self.logit_scale = param(rngs, jax.nn.initializers.constant(2.6592), (), ())

  def encode_text(self, ids, mask=None):
    """Projected text embeddings [B, projection_dim], not normalised."""
    return self.text_projection(self.text_model(ids, mask))

  def encode_image(self, pixels):
    """Projected image embeddings [B, projection_dim], not normalised."""
    return self.visual_projection(self.vision_model(pixels))

  def __call__(self, pixels, ids, mask=None):
    """logits_per_image [B_img, B_txt] = exp(logit_scale) * cosine similarities."""
    img, txt = self.encode_image(pixels), self.encode_text(ids, mask)
    img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
    txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
    return jnp.exp(self.logit_scale[...]) * img @ txt.T
