"""Runnable config files (`configs/<name>.py`, each with `get_config()`) loaded by name or path.

The library never imports the top-level configs/ folder as a package: a bare name resolves to
`configs/<name>.py` under the current directory (the repository root, where the documented
commands run),
and a path ending in .py is loaded as given.
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections


def config_path(config_name: str) -> str:
  """The file a config name refers to: the path itself, or configs/<name>.py."""
  return config_name if config_name.endswith(".py") else os.path.join("configs",
                                                                        f"{config_name}.py")


def config_from_name(config_name: str) -> ml_collections.ConfigDict:
  """`configs/<name>.py`'s get_config(); `name` may also be a path to a .py file."""
  path = config_path(config_name)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} not found (a name means configs/<name>.py "
                            "under the current directory; or give a path to a .py file)")
  spec = importlib.util.spec_from_file_location(
      "_muse_config_" + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
