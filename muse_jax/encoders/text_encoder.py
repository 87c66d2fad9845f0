"""`TextEncoder`: captions -> frozen T5 v1.1 embeddings, jitted and sharded over the mesh.

Used by precompute (hundreds of millions of captions) and sampling (a few prompts):

  encoder = TextEncoder.from_config(config.text_encoder, mesh=mesh, rules=config.mesh.rules)
  emb, mask = encoder.encode(["a red cube on a blue sphere", ...])

Padding convention (the one contract between precompute, training and sampling):
- `encode` returns embeddings [B, L, D] and mask [B, L] int32, L = `max_length`;
- the mask is 1 on real tokens, EOS included, and 0 on padding; valid tokens are always a
  prefix (right padding) and every row has at least one (EOS);
- padded positions of the embeddings are exactly zero, and padded keys are masked out of the
  encoder's attention, so the valid positions do not depend on L or on the padding;
- downstream stages use the valid length `mask.sum(-1)` (e.g. to store only valid rows, and to
  rebuild the mask as `arange(L) < length`).

Sharding: parameters carry logical axis names (`vocab`, `embed`, `mlp`, `heads`, `kv`) mapped to
the mesh by `rules` (by default fsdp over `embed`, tensor over `heads`/`mlp`/`vocab`), so XXL
(4.76B parameters) is split across chips; the batch is split over `data` x `fsdp`. Weights are
placed tensor by tensor as they are read, so loading never needs a second copy of the model in
host memory.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from muse_jax.encoders.text_tokenizer import T5Tokenizer, TokenizedBatch
from muse_jax.models import t5
from muse_jax.models.functional import functionalize
from muse_jax.models.layers import Precision
from muse_jax.parallel.mesh import make_mesh
from muse_jax.parallel.sharding import (DEFAULT_RULES, activation_rules, named_sharding,
                                        tree_shardings)
from muse_jax.weights.t5_hf import iter_hf_params
from muse_jax.weights.t5x import iter_t5x_params

_DTYPES = ("bfloat16", "float32")
_FORMATS = ("random", "hf", "t5x")
_BATCH_AXES = ("act_batch", "act_length")
_OUT_AXES = ("act_batch", "act_length", "act_embed")


def _dtype(name: str, key: str):
  if name not in _DTYPES:
    hint = " (fp16 overflows in T5-XXL)" if name == "float16" else ""
    raise ValueError(f"text_encoder.{key}={name!r} is not supported{hint}; use one of {_DTYPES}")
  return jnp.dtype(name)


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


class TextEncoder:
  """Frozen T5 encoder with its tokenizer, parameters on the mesh and a jitted forward.

  Args:
    config: the T5 shape.
    params: nested dict of arrays (numpy or jax) in the `muse_jax.models.t5` layout, an
      iterable of (path, array) pairs (streamed from a loader), or None for random weights.
    mesh: device mesh with axes data/fsdp/tensor; None = all devices on `fsdp`.
    rules: logical -> mesh axis rules; None = DEFAULT_RULES.
    dtype / param_dtype / output_dtype: compute, stored-weight and output dtypes.
    tokenizer: needed only by `encode` (strings); `encode_tokens` works without it.
    max_length: tokens per caption (the tokenizer's, if one is given).
    attention: 'xla' or 'cudnn'.
    seed: init seed when params is None.
  """

  def __init__(self, config: t5.T5Config, params=None, *, mesh: Mesh | None = None,
               rules=None, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
               output_dtype=jnp.bfloat16, tokenizer: T5Tokenizer | None = None,
               max_length: int = 128, attention: str = "xla", seed: int = 0):
    self.config = config
    self.mesh = mesh if mesh is not None else make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    self.rules = tuple(DEFAULT_RULES if rules is None else rules)
    self.precision = Precision(jnp.dtype(dtype), jnp.dtype(param_dtype))
    self.output_dtype = jnp.dtype(output_dtype)
    self.tokenizer = tokenizer
    self.max_length = tokenizer.max_length if tokenizer is not None else int(max_length)
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
      raise ValueError(f"the sentencepiece model has {tokenizer.vocab_size} pieces but the T5 "
                       f"embedding only {config.vocab_size} rows; wrong spiece_model or size?")
    precision = self.precision
    self.model_def, init_fn = functionalize(
        lambda rngs: t5.T5Encoder(config, rngs=rngs, precision=precision,
                                  implementation=attention))
    abstract = self.model_def.abstract_params()
    self.param_shardings = tree_shardings(abstract, self.model_def.logical_axes(), self.mesh,
                                          self.rules)
    if params is None:
      self.params = jax.jit(init_fn, out_shardings=self.param_shardings)(jax.random.key(seed))
    else:
      self.params = self._place(params, abstract)
    self.batch_sharding = named_sharding(_BATCH_AXES, self.mesh, self.rules)
    out_sharding = named_sharding(_OUT_AXES, self.mesh, self.rules)
    self._forward = jax.jit(self._forward_fn,
                            in_shardings=(self.param_shardings, self.batch_sharding,
                                          self.batch_sharding),
                            out_shardings=(out_sharding, self.batch_sharding))

  @classmethod
  def from_config(cls, cfg, mesh: Mesh | None = None, rules=None,
                  params=None) -> "TextEncoder":
    """Builds the encoder from `muse_jax/configs/common_t5.text_encoder_config` settings.

    `params` (as the constructor takes them) replace the weights the config names, e.g. the
    copy a pipeline bundle holds (muse_jax/sampling/bundle.py).
    """
    config = t5.get_config(cfg.size)
    fmt = cfg.weights_format
    if fmt not in _FORMATS:
      raise ValueError(f"text_encoder.weights_format={fmt!r}; use one of {_FORMATS}")
    if fmt != "random" and not cfg.weights_path:
      raise ValueError(f"text_encoder.weights_format={fmt!r} needs text_encoder.weights_path")
    param_dtype = _dtype(cfg.param_dtype, "param_dtype")
    tokenizer = (T5Tokenizer(cfg.spiece_model, cfg.max_length, cfg.get("tokenizer_threads", 0))
                 if cfg.spiece_model else None)
    if params is None and fmt == "hf":
      params = iter_hf_params(cfg.weights_path, config, param_dtype)
    elif params is None and fmt == "t5x":
      params = iter_t5x_params(cfg.weights_path, config, param_dtype)
    return cls(config, params, mesh=mesh, rules=rules, dtype=_dtype(cfg.dtype, "dtype"),
               param_dtype=param_dtype,
               output_dtype=_dtype(cfg.output_dtype, "output_dtype"), tokenizer=tokenizer,
               max_length=cfg.max_length, attention=cfg.get("attention", "xla"),
               seed=cfg.get("seed", 0))

  def _place(self, params, abstract):
    """Puts arrays on the mesh one at a time, in param_dtype, checking shapes."""
    if isinstance(params, dict):
      items: Iterable = [(_key_path(p), v)
                         for p, v in jax.tree_util.tree_leaves_with_path(params)]
    else:
      items = params
    placed: dict = {}
    for path, value in items:
      if not _has(abstract, path):
        raise ValueError(f"unexpected param {'/'.join(map(str, path))} for {self.config}")
      want, sharding = _get(abstract, path), _get(self.param_shardings, path)
      if tuple(value.shape) != tuple(want.shape):
        raise ValueError(f"param {'/'.join(map(str, path))}: shape {tuple(value.shape)} but "
                         f"the model needs {tuple(want.shape)}")
      host = np.asarray(value).astype(self.precision.param_dtype, copy=False)
      arr = jax.make_array_from_callback(host.shape, sharding, lambda idx, h=host: h[idx])
      del host
      node = placed
      for p in path[:-1]:
        node = node.setdefault(p, {})
      node[path[-1]] = arr
    missing = ["/".join(map(str, _key_path(p)))
               for p, _ in jax.tree_util.tree_leaves_with_path(abstract)
               if not _has(placed, _key_path(p))]
    if missing:
      raise ValueError(f"params are missing {missing}")
    return placed

  def _forward_fn(self, params, ids, mask):
    with activation_rules(self.mesh, self.rules):
      hidden = self.model_def.bind(params)(ids, mask)
    return hidden.astype(self.output_dtype), mask

  @property
  def batch_multiple(self) -> int:
    """Global batch sizes are padded up to a multiple of this (the batch-sharding factor)."""
    spec = self.batch_sharding.spec[0]
    axes = () if spec is None else ((spec,) if isinstance(spec, str) else spec)
    return int(np.prod([self.mesh.shape[a] for a in axes]))

  def tokenize(self, texts: Sequence[str]) -> TokenizedBatch:
    if self.tokenizer is None:
      raise ValueError("this TextEncoder has no tokenizer; set text_encoder.spiece_model")
    return self.tokenizer(texts)

  def encode_tokens(self, ids, mask) -> tuple[jax.Array, jax.Array]:
    """ids, mask [B, L] (host arrays) -> (embeddings [B, L, D], mask [B, L] int32).

    B need not divide the batch sharding in single-process runs (rows are padded and cut
    off). In multi-process runs each process passes its own rows (a multiple of
    `batch_multiple`) and gets the global arrays back (untested beyond one process).
    """
    ids, mask = np.asarray(ids, np.int32), np.asarray(mask, np.int32)
    if ids.shape != mask.shape or ids.ndim != 2:
      raise ValueError(f"ids {ids.shape} and mask {mask.shape} must both be [batch, length]")
    n = ids.shape[0]
    pad = -n % self.batch_multiple
    if pad and jax.process_count() > 1:
      raise ValueError(f"per-process batch {n} must be a multiple of {self.batch_multiple} "
                       "in multi-process runs")
    if pad:  # filler rows with one valid token (no fully masked row), cut off below
      ids = np.concatenate([ids, np.zeros((pad, ids.shape[1]), np.int32)])
      mask = np.concatenate([mask, np.zeros((pad, mask.shape[1]), np.int32)])
      mask[n:, 0] = 1
    ids_g = jax.make_array_from_process_local_data(self.batch_sharding, ids)
    mask_g = jax.make_array_from_process_local_data(self.batch_sharding, mask)
    emb, mask_out = self._forward(self.params, ids_g, mask_g)
    if pad:
      emb, mask_out = emb[:n], mask_out[:n]
    return emb, mask_out

  def encode(self, texts: Sequence[str]) -> tuple[jax.Array, jax.Array]:
    """Captions -> (embeddings [B, L, D] in output_dtype, mask [B, L] int32).

    Padded positions of the embeddings are exactly zero; see the module docstring.
    """
    batch = self.tokenize(texts)
    return self.encode_tokens(batch.ids, batch.mask)


def _key_path(path) -> tuple:
  return tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)


def _has(tree, path) -> bool:
  try:
    _get(tree, path)
    return True
  except (KeyError, TypeError, IndexError):
    return False
