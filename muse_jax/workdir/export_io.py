"""Write and read a portable, framework-neutral export of one trained stage.

An export directory holds:
  model.safetensors               every parameter; flat keys are the parameter tree paths joined
                                  with "." (e.g. `stack.blocks.self_attn.qkv.kernel`). Past
                                  `max_shard_bytes` the tensors go to model-00001-of-0000N...
                                  files instead, listed by
  model.safetensors.index.json    {"metadata": {"total_size": N}, "weight_map": {key: file}}
                                  (Hugging Face's layout)
  config.json                     the stage's full training config (rebuilds the model)
  export.json                     stage, step, params (ema/raw), dtype, parameter count,
                                  sha256 of every other file, muse_jax version and git commit

  info = write_export(DIR, params, config_dict, {"stage": "base", "step": 20, ...})
  config, model_def, params = muse_jax.sampling.loading.load_exported(DIR)  # bind(params)

Writes are atomic. A local export is written into DIR.tmp-<pid>, then renamed. A gs:// (or
other URL) export, where directories cannot be renamed, is written in place with export.json
last: an overwrite first deletes the old export.json, and a directory without it is not an
export to any reader. Reads check every key and shape against the model the config builds and
name every mismatch in one WeightsError.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from muse_jax import paths
from muse_jax.weights.safetensors_io import SafetensorsReader, WeightsError, check_keys
from muse_jax.workdir.saved_config import load_saved_config

FORMAT = "muse_jax.export"
FORMAT_VERSION = 1
INFO_FILE = "export.json"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = WEIGHTS_FILE + ".index.json"
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


class ExportExists(FileExistsError):
  """The export's target directory already holds files (and overwriting was not asked for)."""


def flat_key(path) -> str:
  """A pytree path (dict keys / indices) -> 'a.b.0.kernel'."""
  return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def flatten(tree) -> dict[str, Any]:
  """Nested params -> {flat key: leaf}, in the tree's (sorted) order."""
  out: dict[str, Any] = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    key = flat_key(path)
    if key in out:
      raise WeightsError(f"two parameters flatten to the same key {key!r}")
    out[key] = leaf
  return out


def is_export(path: paths.PathLike) -> bool:
  """Whether `path` is an export directory (holds export.json)."""
  return bool(path) and (paths.resolve(path) / INFO_FILE).is_file()


def _out_dtype(x, dtype: np.dtype) -> np.dtype:
  """The stored dtype of a parameter: `dtype` for floating ones, else its own."""
  return dtype if jnp.issubdtype(x.dtype, jnp.floating) else np.dtype(x.dtype)


def _host(x, dtype: np.dtype) -> np.ndarray:
  """A parameter on the host in its stored dtype (bf16: rounded to nearest even)."""
  return np.ascontiguousarray(np.asarray(x).astype(_out_dtype(x, dtype)))


def _nbytes(x, dtype: np.dtype) -> int:
  return int(np.prod(x.shape, dtype=np.int64)) * _out_dtype(x, dtype).itemsize


def plan_shards(sizes: Mapping[str, int], max_bytes: int) -> list[list[str]]:
  """Keys in order, packed greedily into groups of at most max_bytes (a bigger tensor alone)."""
  shards: list[list[str]] = [[]]
  used = 0
  for key, size in sizes.items():
    if shards[-1] and used + size > max_bytes:
      shards.append([])
      used = 0
    shards[-1].append(key)
    used += size
  return shards


def write_weights(params: Mapping[str, Any], directory: paths.PathLike, dtype: str,
                  max_shard_bytes: int) -> list[str]:
  """Writes {flat key: array} as safetensors into `directory`; returns the files written.

  One model.safetensors when everything fits in max_shard_bytes, else numbered shards plus
  the index json. Arrays are copied to the host one shard at a time.
  """
  from safetensors.numpy import save
  directory = paths.resolve(directory)
  np_dtype = DTYPES[dtype]
  sizes = {k: _nbytes(v, np_dtype) for k, v in params.items()}
  shards = plan_shards(sizes, max_shard_bytes)
  if len(shards) == 1:
    names = [WEIGHTS_FILE]
  else:
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  for name, keys in zip(names, shards):
    (directory / name).write_bytes(save({k: _host(params[k], np_dtype) for k in keys},
                                        metadata={"format": "np"}))
  if len(shards) > 1:
    index = {"metadata": {"total_size": sum(sizes.values())},
             "weight_map": {k: name for name, keys in zip(names, shards) for k in keys}}
    _write_json(directory / INDEX_FILE, index)
    names.append(INDEX_FILE)
  return names


def sha256(path: paths.PathLike) -> str:
  h = hashlib.sha256()
  with paths.resolve(path).open("rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _write_json(path: paths.PathLike, value) -> None:
  paths.resolve(path).write_text(json.dumps(value, indent=2, sort_keys=False) + "\n")


def check_target(out: paths.PathLike, overwrite: bool) -> None:
  """ExportExists when `out` is a file or a non-empty directory and overwrite is off."""
  out = paths.resolve(out)
  if overwrite or not out.exists():
    return
  if out.is_dir() and not any(out.iterdir()):
    return
  raise ExportExists(f"{out} already exists and is not empty; choose another --out or pass "
                     "--overwrite to replace it")


def staging_dir(out: paths.PathLike, marker: str = INFO_FILE) -> Any:
  """Where the files are written before they become the export (or bundle): a fresh sibling
  directory that is renamed to `out` locally; `out` itself on a URL, emptied and without its
  `marker` file (deleted first, so a half-written overwrite is no export)."""
  out = paths.resolve(out)
  if not paths.is_url(out):
    tmp = paths.resolve(f"{out}.tmp-{os.getpid()}")
    if tmp.exists():
      tmp.rmtree()
    tmp.mkdir(parents=True)
    return tmp
  if (out / marker).exists():
    (out / marker).unlink()
  if out.exists():
    out.rmtree()
  out.mkdir(parents=True, exist_ok=True)
  return out


def move_into_place(tmp, out) -> None:
  """Renames tmp to out (local only); a previous out is moved aside first and deleted after
  the rename."""
  old = None
  if os.path.isdir(out) and not os.path.islink(out) and os.listdir(out):
    old = f"{out}.old-{os.getpid()}"
    os.rename(out, old)
  elif os.path.lexists(out) and not os.path.isdir(out):
    os.remove(out)
  os.replace(tmp, out)
  if old is not None:
    paths.resolve(old).rmtree(missing_ok=True)


def write_export(out: str, params, config: dict, info: dict, *, dtype: str = "float32",
                 max_shard_bytes: int = 2 << 30, overwrite: bool = False) -> dict:
  """Writes an export of `params` (nested dict) atomically; returns export.json's content.

  Args:
    out: the export directory (its parent is created).
    params: the stage's parameters (jax or numpy arrays).
    config: the stage's training config as a JSON-able dict (written to config.json).
    info: provenance merged into export.json (stage, step, params, source, version, ...).
    dtype: 'float32' or 'bfloat16' for floating parameters.
    max_shard_bytes: the largest safetensors file (one tensor may exceed it alone).
    overwrite: replace a non-empty `out` (else ExportExists).
  """
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r}; choose one of {', '.join(DTYPES)}")
  if max_shard_bytes <= 0:
    raise ValueError(f"max_shard_bytes={max_shard_bytes} must be positive")
  out = paths.resolve(out)
  check_target(out, overwrite)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = staging_dir(out)
  try:
    flat = flatten(params)
    files = write_weights(flat, tmp, dtype, max_shard_bytes)
    _write_json(tmp / CONFIG_FILE, config)
    files.append(CONFIG_FILE)
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, **info, "dtype": dtype,
            "parameter_count": int(sum(np.prod(v.shape, dtype=np.int64) for v in flat.values())),
            "tensor_count": len(flat),
            "files": {name: {"bytes": (tmp / name).stat().length,
                             "sha256": sha256(tmp / name)} for name in files}}
    _write_json(tmp / INFO_FILE, info)  # last: the export exists once this file does
    if tmp != out:
      move_into_place(tmp, out)
  except BaseException:
    if tmp != out:
      tmp.rmtree(missing_ok=True)
    raise
  return info


def read_info(path: paths.PathLike) -> dict:
  """An export's export.json; FileNotFoundError when `path` is not an export."""
  file = paths.resolve(path) / INFO_FILE
  if not file.is_file():
    raise FileNotFoundError(f"{path} is not a muse_jax export (no {INFO_FILE}); make one with "
                            "python -m muse_jax.export --workdir=WORKDIR --out=DIR")
  info = json.loads(file.read_text())
  if not isinstance(info, dict) or info.get("format") != FORMAT:
    raise WeightsError(f"{file} is not a {FORMAT} file")
  return info


def verify_files(path: str) -> None:
  """WeightsError naming every file of an export whose sha256 differs from export.json's."""
  root = paths.resolve(path)
  bad = [name for name, meta in read_info(path)["files"].items()
         if not (root / name).is_file() or sha256(root / name) != meta["sha256"]]
  if bad:
    raise WeightsError(f"export {path}: missing or changed files {', '.join(sorted(bad))}")


def read_export(path: str, make_model_def: Callable[[Any], Any], *,
                model_overrides: Optional[Mapping[str, Any]] = None,
                dtype: Optional[str] = None, verify: bool = False):
  """An export directory -> (config, model_def, params).

  Args:
    path: the export directory.
    make_model_def: the stage's FunctionalModel from its config as stored
      (`muse_jax.sampling.loading.load_exported` passes the stage registry's).
    model_overrides: runtime `model` keys to change (dtype, attention, ...); shapes come from
      the export's config.json.
    dtype: floating params in this dtype; None = the model's param dtype (what it trained in).
    verify: check every file's sha256 against export.json first.

  Returns:
    (the training config as a ConfigDict, the stage's FunctionalModel, params as a nested dict
    of jax.Arrays); model and params are as stored (`model.fp8_matmuls` is applied by
    `muse_jax.sampling.loading.sampling_stage`). A key or shape that differs from the model's
    raises WeightsError naming all of them.
  """
  read_info(path)
  if verify:
    verify_files(path)
  config = load_saved_config(path)
  with config.unlocked():
    for key, value in (model_overrides or {}).items():
      if key not in config.model:
        raise ValueError(f"model override {key!r} is not a model key of {path}/config.json")
      config.model[key] = value
  model_def = make_model_def(config)
  abstract = model_def.abstract_params()
  reader = SafetensorsReader(path)
  check_keys({k: a.shape for k, a in flatten(abstract).items()},
             {k: reader.shape(k) for k in reader}, source=f"export {path}")

  def load(p, a):
    x = reader[flat_key(p)]
    want = a.dtype if dtype is None or not jnp.issubdtype(a.dtype, jnp.floating) else dtype
    return jnp.asarray(x.astype(want))

  return config, model_def, jax.tree_util.tree_map_with_path(load, abstract)
