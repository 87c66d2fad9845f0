"""Load T5X T5 v1.1 checkpoints into the `muse_jax.models.t5` parameter tree.

A T5X checkpoint directory (e.g. `t5_1_1_xxl/checkpoint_1000000/`) holds
- `checkpoint`: msgpack (flax serialization) of
  `{"version": 3, "optimizer": {"target": params, "state": ...}}`, whose leaves are either
  inline arrays or TensorStore spec dicts;
- one gzip zarr directory per spec'd array, named by its key path with '/' -> '.'
  (e.g. `target.encoder.layers_0.attention.query.kernel/`).

Security: a spec inside a downloaded file could name any driver and any path (another file on
the machine, a network store), and a file inside the directory could be a symlink to anywhere.
We never pass a stored spec to TensorStore. From each spec we take only its relative path
(`kvstore.path`, or the older top-level `path`) and refuse anything absolute, containing `..`
or carrying a URL scheme. Every file is opened by this module, and only after its path,
symlinks followed, is found inside the checkpoint directory: the `checkpoint` file, each
array's `.zarray` and each chunk its metadata implies. TensorStore only decodes, from an
in-memory store we fill with those bytes, so it never opens a file itself. A chunk file that is
missing is an error naming it: T5X writes every chunk (it sets no fill value), so a missing one
is a lost file, not a constant block. Nothing is unpickled; msgpack is data-only.
A checkpoint on gs:// (e.g. gs://t5-data/pretrained_models/...) is read through etils.epath;
object stores have no symlinks, so there the containment check is on the path itself.

T5X names and layouts (under `target/`), with the muse_jax destination:
  token_embedder/embedding                      [vocab, embed]        -> same
  encoder/relpos_bias/rel_embedding             [heads, buckets]      -> same
  encoder/layers_{i}/{query,key,value}/kernel   [embed, heads*kv]     -> [embed, heads, kv]
  encoder/layers_{i}/attention/out/kernel       [heads*kv, embed]     -> [heads, kv, embed]
  encoder/layers_{i}/pre_{attention,mlp}_layer_norm/scale, mlp/{wi_0,wi_1,wo}/kernel,
  encoder/encoder_norm/scale                                          -> same
Kernels already stored with heads split out ([embed, heads, kv]) are accepted too.
The decoder and optimizer state are never read.
"""
from __future__ import annotations

import itertools
import json
import os
import re
from typing import Any, Iterator

import numpy as np

from muse_jax import paths
from muse_jax.models.t5 import T5Config
from muse_jax.weights.safetensors_io import WeightsError, check_keys
from muse_jax.weights.t5_hf import Entry, Path, nest

_IGNORED_PREFIXES = ("decoder/",)


def t5x_entries(cfg: T5Config) -> list[Entry]:
  """Every T5X tensor the encoder needs (names relative to `target/`), in reading order."""
  d, h, k, f = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff
  inner = h * k
  out = [
      Entry(("token_embedder", "embedding"), "token_embedder/embedding",
            (cfg.vocab_size, d), lambda x: x),
      Entry(("relpos_bias", "rel_embedding"), "encoder/relpos_bias/rel_embedding",
            (h, cfg.num_buckets), lambda x: x),
  ]
  for i in range(cfg.num_layers):
    pre, lp = f"encoder/layers_{i}", ("layers", i)
    out.append(Entry(lp + ("pre_attention_layer_norm", "scale"),
                     f"{pre}/pre_attention_layer_norm/scale", (d,), lambda x: x))
    for name in ("query", "key", "value"):
      out.append(Entry(lp + ("attention", name, "kernel"), f"{pre}/attention/{name}/kernel",
                       (d, inner), lambda x: x.reshape(d, h, k)))
    out.append(Entry(lp + ("attention", "out", "kernel"), f"{pre}/attention/out/kernel",
                     (inner, d), lambda x: x.reshape(h, k, d)))
    out.append(Entry(lp + ("pre_mlp_layer_norm", "scale"), f"{pre}/pre_mlp_layer_norm/scale",
                     (d,), lambda x: x))
    for name, shape in (("wi_0", (d, f)), ("wi_1", (d, f)), ("wo", (f, d))):
      out.append(Entry(lp + ("mlp", name, "kernel"), f"{pre}/mlp/{name}/kernel", shape,
                       lambda x: x))
  out.append(Entry(("encoder_norm", "scale"), "encoder/encoder_norm/scale", (d,), lambda x: x))
  return out


def _is_spec(x: Any) -> bool:
  return isinstance(x, dict) and "driver" in x and ("kvstore" in x or "path" in x)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  if isinstance(tree, dict) and not _is_spec(tree):
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}/"))
  else:
    out[prefix[:-1]] = tree
  return out


def read_checkpoint_tree(checkpoint_dir: str) -> dict[str, Any]:
  """The msgpack `checkpoint` of a T5X directory, as {'target/...' name: array or spec}."""
  from flax import serialization  # data-only msgpack decoding (ext types for ndarrays)
  path = os.path.join(checkpoint_dir, "checkpoint")
  if not paths.resolve(path).is_file():
    raise FileNotFoundError(f"no T5X `checkpoint` file in {checkpoint_dir}")
  blob = _read_inside(_root(checkpoint_dir), path, "checkpoint file")
  try:
    state = serialization.msgpack_restore(blob)
  except Exception as e:  # msgpack raises several unrelated types on malformed input
    raise WeightsError(f"{path}: not a msgpack T5X checkpoint ({_first_line(e)})") from None
  if not isinstance(state, dict):
    raise WeightsError(f"{path}: expected a msgpack map at the top level")
  if isinstance(state.get("optimizer"), dict) and "target" in state["optimizer"]:
    target = state["optimizer"]["target"]
  elif "target" in state:
    target = state["target"]
  else:
    raise WeightsError(f"{path}: no optimizer/target in the checkpoint "
                       f"(top-level keys {sorted(state)}); is this a T5X checkpoint?")
  return _flatten(target)


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def safe_array_path(checkpoint_dir: str, spec: dict, name: str) -> str:
  """Absolute path of the zarr array a stored spec names, or WeightsError if it is unsafe."""
  if spec.get("driver") != "zarr":
    raise WeightsError(f"T5X array {name}: driver {spec.get('driver')!r} is not supported "
                       "(expected 'zarr')")
  kvstore = spec.get("kvstore")
  rel = None
  if isinstance(kvstore, dict):
    if kvstore.get("driver") not in ("file", "gcs", "gfile"):
      raise WeightsError(f"T5X array {name}: kvstore driver {kvstore.get('driver')!r} is "
                         "not supported")
    rel = kvstore.get("path")
  elif kvstore is not None:
    raise WeightsError(f"T5X array {name}: kvstore must be a map, got {kvstore!r}")
  if rel is None:
    rel = spec.get("path")
  if not isinstance(rel, str) or not rel:
    raise WeightsError(f"T5X array {name}: spec has no relative path")
  parts = re.split(r"[\\/]+", rel)
  if (os.path.isabs(rel) or rel.startswith(("/", "\\", "~")) or _SCHEME.match(rel)
      or ".." in parts or "\x00" in rel):
    raise WeightsError(f"T5X array {name}: refusing path {rel!r}; only relative paths inside "
                       f"the checkpoint directory {checkpoint_dir} are accepted")
  root = _root(checkpoint_dir)
  if paths.is_url(root):  # no symlinks, and `parts` holds no '..': inside by construction
    full = "/".join([root] + [p for p in parts if p not in ("", ".")])
    inside = full != root
  else:
    full = os.path.realpath(os.path.join(root, rel))
    inside = os.path.commonpath([root, full]) == root and full != root
  if not inside:
    raise WeightsError(f"T5X array {name}: path {rel!r} resolves to {full}, outside the "
                       f"checkpoint directory {root}")
  return full


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def _root(checkpoint_dir: str) -> str:
  """The checkpoint directory with symlinks resolved; a URL as given."""
  return checkpoint_dir.rstrip("/") if paths.is_url(checkpoint_dir) else os.path.realpath(
      checkpoint_dir)


def _read_inside(root: str, path: str, what: str) -> bytes:
  """The bytes of the file at `path`, which must resolve (symlinks followed) inside `root`, a
  resolved directory; WeightsError naming `what` and the path otherwise, or if it is missing."""
  if paths.is_url(root):
    if not path.startswith(root + "/") or not paths.resolve(path).is_file():
      raise WeightsError(f"T5X {what}: {path} is missing or outside {root}")
    return paths.resolve(path).read_bytes()
  real = os.path.realpath(path)
  if os.path.commonpath([root, real]) != root:
    raise WeightsError(f"T5X {what}: {path} resolves to {real}, outside the checkpoint "
                       f"directory {root}")
  if not os.path.isfile(real):
    raise WeightsError(f"T5X {what}: {path} is missing")
  try:
    # The resolved path has no symlink left; O_NOFOLLOW keeps it so if one appears meanwhile.
    fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fh:
      return fh.read()
  except OSError as e:
    raise WeightsError(f"T5X {what}: cannot read {path} ({e.strerror or e})") from None


class _ZarrArray:
  """A zarr v2 array of the checkpoint whose files this module opens (see the module doc)."""

  def __init__(self, root: str, path: str, name: str):
    self.root, self.path, self.name = root, path, name
    meta_path = os.path.join(path, ".zarray")
    self.meta = _read_inside(root, meta_path, f"array {name} metadata")
    try:
      meta = json.loads(self.meta)
      self.shape = tuple(int(s) for s in meta["shape"])
      self.chunks = tuple(int(c) for c in meta["chunks"])
      self.sep = meta.get("dimension_separator") or "."
    except (ValueError, KeyError, TypeError) as e:
      raise WeightsError(f"T5X array {name}: {meta_path} is not zarr metadata "
                         f"({_first_line(e)})") from None
    if (len(self.chunks) != len(self.shape) or min(self.chunks, default=1) < 1
        or self.sep not in (".", "/")):
      raise WeightsError(f"T5X array {name}: {meta_path} has chunks {self.chunks} for shape "
                         f"{self.shape} and separator {self.sep!r}")

  def chunk_keys(self) -> list[str]:
    """Every chunk key the metadata implies (zarr v2: grid indices joined by the separator)."""
    if not self.shape:
      return ["0"]
    grid = [range(-(-s // c)) for s, c in zip(self.shape, self.chunks)]
    return [self.sep.join(map(str, idx)) for idx in itertools.product(*grid)]

  def read(self) -> np.ndarray:
    import tensorstore as ts
    context = ts.Context()  # its memory kvstore is private to this read
    kv = ts.KvStore.open({"driver": "memory"}, context=context).result()
    kv.write(".zarray", self.meta).result()
    for key in self.chunk_keys():
      blob = _read_inside(self.root, os.path.join(self.path, *key.split("/")),
                         f"array {self.name} chunk {key}")
      kv.write(key, blob).result()
    try:
      store = ts.open({"driver": "zarr", "kvstore": {"driver": "memory"}}, context=context,
                      open=True, read=True, write=False).result()
      return np.asarray(store.read().result())
    except ValueError as e:  # TensorStore's error type: bad metadata or undecodable chunk
      raise WeightsError(f"T5X array {self.name}: cannot decode {self.path} "
                         f"({_first_line(e)})") from None


class _Leaf:
  """A T5X leaf: an inline array or a zarr array read through `_ZarrArray`."""

  def __init__(self, checkpoint_dir: str, name: str, value: Any):
    self.name = name
    if _is_spec(value):
      path = safe_array_path(checkpoint_dir, value, name)
      if not paths.resolve(path).is_dir():
        raise WeightsError(f"T5X array {name}: {path} does not exist")
      self.store = _ZarrArray(_root(checkpoint_dir), path, name)
      self.array = None
      self.shape = self.store.shape
    else:
      self.store = None
      self.array = np.asarray(value)
      self.shape = tuple(self.array.shape)

  def read(self) -> np.ndarray:
    if self.store is not None:
      return self.store.read()
    return self.array


def iter_t5x_params(checkpoint_dir: str, cfg: T5Config, dtype=np.float32
                    ) -> Iterator[tuple[Path, np.ndarray]]:
  """Yields (params path, array in our layout and `dtype`), one tensor at a time.

  Every stored spec is validated first (so an unsafe checkpoint is refused before any data
  is read), then the key set is checked against the config (WeightsError names missing,
  unexpected and misshapen keys), then tensors are read one by one.
  """
  if paths.resolve(checkpoint_dir).is_file():  # accept the path of the `checkpoint` file too
    checkpoint_dir = os.path.dirname(checkpoint_dir)
  flat = read_checkpoint_tree(checkpoint_dir)
  entries = t5x_entries(cfg)
  wanted = {e.key: e for e in entries}
  leaves = {}
  for name, value in flat.items():
    if _is_spec(value):  # validate every spec, even ones we would not read
      safe_array_path(checkpoint_dir, value, name)
    if name in wanted:
      leaves[name] = _Leaf(checkpoint_dir, name, value)
  found = {name: _shape_of(value, leaves.get(name)) for name, value in flat.items()}
  # Attention kernels stored with heads split out hold the same bytes in the same order.
  for name, split in _split_shapes(cfg).items():
    if found.get(name) == split:
      found[name] = wanted[name].shape
  check_keys({e.key: e.shape for e in entries}, found,
             source=f"T5X checkpoint {checkpoint_dir}", ignore_unexpected=_IGNORED_PREFIXES)
  for e in entries:
    x = leaves[e.key].read()
    x = x.reshape(e.shape) if x.shape != e.shape else x
    yield e.path, np.ascontiguousarray(e.convert(x)).astype(dtype, copy=False)


def _split_shapes(cfg: T5Config) -> dict[str, tuple[int, ...]]:
  """The heads-split alternative shape accepted for each attention kernel."""
  h, k, d = cfg.num_heads, cfg.d_kv, cfg.d_model
  out = {}
  for i in range(cfg.num_layers):
    for name in ("query", "key", "value"):
      out[f"encoder/layers_{i}/attention/{name}/kernel"] = (d, h, k)
    out[f"encoder/layers_{i}/attention/out/kernel"] = (h, k, d)
  return out


def _shape_of(value: Any, leaf: _Leaf | None) -> tuple[int, ...]:
  if leaf is not None:
    return leaf.shape
  if _is_spec(value):
    shape = value.get("metadata", {}).get("shape")
    return tuple(shape) if shape is not None else ()
  return tuple(np.shape(value))


def load_t5x_params(checkpoint_dir: str, cfg: T5Config, dtype=np.float32) -> dict:
  """The whole encoder as a nested dict of numpy arrays (one copy in host memory)."""
  return nest(iter_t5x_params(checkpoint_dir, cfg, dtype))
