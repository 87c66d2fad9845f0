"""TensorFlow and TensorFlow Datasets for the tf.data paths, with a one-line error without them.

They are the `tf` install extra (requirements-tf.txt), needed only by the precompute sources
data.source=tfds and data.source=tfrecord, the training reader data.reader=tf and TFDS caption
sets (evaluate --captions=tfds:...). Those paths import them through `tensorflow(what)` and
`tensorflow_datasets(what)`; a missing one raises `MissingTensorFlow`, a ConfigError, which
every entry point prints as one line with exit status 2.

Callers import this module where they need TensorFlow rather than at their top: ConfigError's
module imports JAX, which the data modules do not otherwise need.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from muse_jax.configs.checks import ConfigError

INSTALL = "pip install -e '.[tf]' (or add TF=1 to make install)"


class MissingTensorFlow(ConfigError, ImportError):
  """TensorFlow or TensorFlow Datasets cannot be imported; the message names what needs it."""


def _require(module: str, label: str, what: str) -> ModuleType:
  try:
    return importlib.import_module(module)
  except ImportError as e:
    if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == module:
      why = "which is not installed"
    else:  # installed but broken (e.g. a missing shared library): say what failed
      why = f"which fails to import ({(str(e).strip().splitlines() or [type(e).__name__])[0]})"
    err = MissingTensorFlow(f"{what} needs {label}, {why}: {INSTALL}")
    err.name = module
    raise err from e


def tensorflow(what: str) -> ModuleType:
  """The `tensorflow` module; `what` (e.g. "data.reader=tf") names the user of it in errors."""
  return _require("tensorflow", "TensorFlow", what)


def tensorflow_datasets(what: str) -> ModuleType:
  """The `tensorflow_datasets` module (TensorFlow checked first, as it needs it)."""
  tensorflow(what)
  return _require("tensorflow_datasets", "TensorFlow Datasets", what)
