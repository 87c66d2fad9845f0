"""The trainer's input sources, whose failures are user errors: one line, exit 2.

A data path without a manifest, a manifest that is not JSON, a listed shard that is missing, or
a record that cannot be read mid-run (the data layer names the file and the precompute to
rerun) stop the run with `InputError` (a ConfigError) instead of a traceback. A failure
mid-run keeps the newest checkpoint, so rerunning after the data is fixed resumes.
"""
from __future__ import annotations

import json

from muse_jax.configs.checks import ConfigError
from muse_jax.data.batch import BatchSource


class InputError(ConfigError):
  """Missing, unreadable or corrupt input data; the message names the path."""


class _ReportedSource:
  """`source` with its read failures raised as InputError; everything else is the source's."""

  def __init__(self, source: BatchSource, split: str):
    self._source, self._split = source, split

  def __iter__(self):
    return self

  def __next__(self):
    try:
      return next(self._source)
    except (RuntimeError, OSError, ValueError) as e:
      raise InputError(f"the {self._split} input: {e}") from None

  def __getattr__(self, name):
    return getattr(self._source, name)


def open_input(stage, split: str, process_index: int, process_count: int):
  """The stage's `split` input ('train' or 'eval'), its failures reported as InputError."""
  try:
    source = stage.make_source(split, process_index, process_count)
  except ConfigError:
    raise
  except json.JSONDecodeError as e:
    raise InputError(f"data.path={stage.config.data.get('path', '')!r}: a manifest is not "
                     f"valid JSON ({e}); rerun the precompute that wrote it") from None
  except (OSError, ValueError, KeyError) as e:
    raise InputError(f"the {split} input: {e}") from None
  return _ReportedSource(source, split)
