"""Load Inception-v3 weights (torchvision `Inception3` state-dict layout) from safetensors.

Both weight files FID uses have torchvision's key names and shapes for every layer up to the
final pool: torchvision's `inception_v3` weights and pytorch-fid's FID weights
(`pt_inception-2015-12-05-*.pth`, built as an `Inception3` with its Mixed blocks swapped for
`FIDInception*` blocks that keep the parameter names). So one key set serves both variants; the
variant (`muse_jax.models.inception.VARIANTS`) is chosen when the model is built. Convert a
`.pth` once with `tools/pth_to_safetensors.py`; muse_jax itself never unpickles.

Key mapping (muse_jax path -> state-dict key), e.g. `Mixed_5b.branch1x1.conv.kernel`:
  <layer>.conv.kernel [kh, kw, in, out] -> <layer>.conv.weight [out, in, kh, kw] (transposed)
  <layer>.bn.scale / bias / mean / var   -> <layer>.bn.weight / bias / running_mean / running_var

Keys that are read and dropped, by design:
  `AuxLogits.*`  the auxiliary classifier (used in training only; absent when aux_logits=False)
  `fc.*`         the classifier after the pool (1000 classes in torchvision's file, 1008 in
                 pytorch-fid's); FID uses the pool features before it
  `*.bn.num_batches_tracked`  BatchNorm's training step counter (present in newer saves)
Any other key that is missing, unexpected or misshapen is an error naming all such keys.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import numpy as np

from muse_jax.models import inception as I
from muse_jax.models.functional import FunctionalModel, functionalize
from muse_jax.models.inception_preprocess import preprocess, validate_images
from muse_jax.weights.safetensors_io import SafetensorsReader, WeightsError, check_keys

IGNORED_PREFIXES = ("AuxLogits.", "fc.")
IGNORED_SUFFIX = ".bn.num_batches_tracked"
LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
              "var": "running_var"}


@functools.lru_cache(maxsize=None)
def model_def(variant: str = "fid") -> FunctionalModel:
  """The `functionalize`d InceptionV3 of `variant` (traced once per variant)."""
  return functionalize(lambda r: I.InceptionV3(variant, rngs=r))[0]


def _parts(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]


def torch_name(parts: list[str]) -> str:
  """muse_jax parameter path -> torchvision state-dict key."""
  return ".".join(parts[:-1] + [LEAF_NAMES[parts[-1]]])


def expected_keys() -> dict[str, tuple[list[str], tuple[int, ...]]]:
  """state-dict key -> (muse_jax path, torch-layout shape) for every parameter."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(model_def().abstract_params()):
    parts = _parts(path)
    shape = tuple(leaf.shape)
    if parts[-1] == "kernel":
      kh, kw, cin, cout = shape
      shape = (cout, cin, kh, kw)
    out[torch_name(parts)] = (parts, shape)
  return out


def _set(tree: dict, parts: list[str], value) -> None:
  for p in parts[:-1]:
    tree = tree.setdefault(p, {})
  tree[parts[-1]] = value


def load_inception(path: str) -> dict:
  """Params (nested dict of float32 numpy arrays) for `model_def(variant).bind(params)`.

  `path`: a `.safetensors` file, a directory holding one, or a sharded index json. Raises
  `WeightsError` naming every missing, unexpected (beyond the ignored keys above) and misshapen
  key.
  """
  reader = SafetensorsReader(path)
  want = expected_keys()
  found = {k: reader.shape(k) for k in reader if not k.endswith(IGNORED_SUFFIX)}
  check_keys({k: s for k, (_, s) in want.items()}, found, source=path,
             ignore_unexpected=IGNORED_PREFIXES)
  params: dict = {}
  for key, (parts, _) in want.items():
    w = np.asarray(reader[key], dtype=np.float32)
    if parts[-1] == "kernel":
      w = np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))
    _set(params, parts, w)
  return params


def feature_fn(params: dict, variant: str = "fid", size: int = I.INPUT_SIZE,
               shard: Callable | None = None) -> Callable[[np.ndarray], np.ndarray]:
  """images [B, H, W, 3] (uint8, or float in [0, 1]) -> pool features [B, 2048] float32 numpy.

  Validates each batch on the host (`validate_images`), then runs `preprocess` (resize to
  `size`, scale to [-1, 1]) and the network in one jitted function; one compilation per input
  shape and dtype. `shard(images)` (e.g. a `jax.device_put` that splits the rows over devices,
  with `params` replicated on them) places each batch before the call.
  """
  if variant not in I.VARIANTS:
    raise WeightsError(f"inception variant must be one of {I.VARIANTS}, got {variant!r}")
  fm = model_def(variant)
  run = jax.jit(lambda p, x: fm.bind(p)(preprocess(x, size)))

  def features(images):
    validate_images(images)
    return np.asarray(run(params, images if shard is None else shard(images)))

  return features
