"""Load Hugging Face T5 v1.1 safetensors into the `muse_jax.models.t5` parameter tree.

Accepts `T5EncoderModel` or full `T5ForConditionalGeneration` checkpoints (the decoder and
`lm_head` are ignored), as one `.safetensors` file, a directory, or a sharded checkpoint with
`model.safetensors.index.json`. The embedding may be stored as `shared.weight` or as its alias
`encoder.embed_tokens.weight`.

HF stores dense weights as (out, in); the muse_jax tree stores kernels as (in, out) with the
heads split out (see `muse_jax.models.t5`). Tensors are read and converted one at a time
(`iter_hf_params`), so a caller that places each one on devices before asking for the next
never holds a second copy of the model in host memory. Nothing is unpickled.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import numpy as np

from muse_jax.models.t5 import T5Config
from muse_jax.weights.safetensors_io import SafetensorsReader, WeightsError, check_keys

Path = tuple  # a key path into the nested params dict, e.g. ("layers", 0, "mlp", "wo", "kernel")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One source tensor: where it goes, what it is called and shaped there, how to convert."""
  path: Path
  key: str
  shape: tuple[int, ...]
  convert: Callable[[np.ndarray], np.ndarray]


def _same(x):
  return x


def _t(shape):
  """Transpose a 2-D (out, in) tensor, then reshape to `shape`."""
  return lambda x: x.T.reshape(shape)


def hf_entries(cfg: T5Config) -> list[Entry]:
  """Every HF tensor the encoder needs, in reading order."""
  d, h, k, f = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff
  inner = h * k
  out = [
      Entry(("token_embedder", "embedding"), "shared.weight", (cfg.vocab_size, d), _same),
      Entry(("relpos_bias", "rel_embedding"),
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            (cfg.num_buckets, h), lambda x: x.T),
  ]
  for i in range(cfg.num_layers):
    pre = f"encoder.block.{i}.layer"
    lp = ("layers", i)
    out.append(Entry(lp + ("pre_attention_layer_norm", "scale"),
                     f"{pre}.0.layer_norm.weight", (d,), _same))
    for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v")):
      out.append(Entry(lp + ("attention", ours, "kernel"),
                       f"{pre}.0.SelfAttention.{theirs}.weight", (inner, d), _t((d, h, k))))
    out.append(Entry(lp + ("attention", "out", "kernel"), f"{pre}.0.SelfAttention.o.weight",
                     (d, inner), _t((h, k, d))))
    out.append(Entry(lp + ("pre_mlp_layer_norm", "scale"),
                     f"{pre}.1.layer_norm.weight", (d,), _same))
    for name in ("wi_0", "wi_1"):
      out.append(Entry(lp + ("mlp", name, "kernel"), f"{pre}.1.DenseReluDense.{name}.weight",
                       (f, d), lambda x: x.T))
    out.append(Entry(lp + ("mlp", "wo", "kernel"), f"{pre}.1.DenseReluDense.wo.weight",
                     (d, f), lambda x: x.T))
  out.append(Entry(("encoder_norm", "scale"), "encoder.final_layer_norm.weight", (d,), _same))
  return out


# Keys a full T5 checkpoint holds beyond the encoder; never an error.
_IGNORED_PREFIXES = ("decoder.", "lm_head.")
_EMBED_ALIAS = "encoder.embed_tokens.weight"


def _convert(entry: Entry, x: np.ndarray, dtype) -> np.ndarray:
  return np.ascontiguousarray(entry.convert(x)).astype(dtype, copy=False)


def iter_hf_params(path: str, cfg: T5Config, dtype=np.float32
                   ) -> Iterator[tuple[Path, np.ndarray]]:
  """Yields (params path, array in our layout and `dtype`), one tensor at a time.

  Raises WeightsError naming every missing, unexpected or misshapen key before reading any
  tensor data.
  """
  reader = SafetensorsReader(path)
  found = {k: reader.shape(k) for k in reader}
  embed_key = "shared.weight"
  if embed_key not in found and _EMBED_ALIAS in found:
    embed_key = _EMBED_ALIAS
    found["shared.weight"] = found.pop(_EMBED_ALIAS)
  elif embed_key in found and _EMBED_ALIAS in found:
    if found[_EMBED_ALIAS] != found[embed_key]:
      raise WeightsError(f"{path}: {_EMBED_ALIAS} {found[_EMBED_ALIAS]} and shared.weight "
                         f"{found[embed_key]} should be the same tied tensor")
    del found[_EMBED_ALIAS]
  entries = hf_entries(cfg)
  check_keys({e.key: e.shape for e in entries}, found, source=f"HF T5 checkpoint {path}",
             ignore_unexpected=_IGNORED_PREFIXES)
  for e in entries:
    key = embed_key if e.key == "shared.weight" else e.key
    yield e.path, _convert(e, reader[key], dtype)


def nest(items) -> dict:
  """Builds the nested params dict from (path, array) pairs."""
  tree: dict = {}
  for path, value in items:
    node = tree
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = value
  return tree


def load_hf_params(path: str, cfg: T5Config, dtype=np.float32) -> dict:
  """The whole encoder as a nested dict of numpy arrays (one copy in host memory)."""
  return nest(iter_hf_params(path, cfg, dtype))
