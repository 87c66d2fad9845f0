"""A sweep file's points, checked against the base config before anything runs.

A sweep file defines `get_sweep()` returning a list of dicts {"section.key": value}, one per
point. Every point is checked the way the trainer will read it:
- each key must name a value of the config (not a section);
- each value must fit the field's type by ml_collections' rules (an int into a float field is
  fine and becomes a float; a str into an int field is not), and, stricter than
  ml_collections, a bool only goes into a bool field and a bool field takes only a bool;
- the value's command-line form (`--config.key=VALUE`) must parse back, through the same
  `ml_collections.config_flags` parsing as `python -m muse_jax.train`, to the same value.
A point that fails stops the whole sweep with one line naming the point and the key.

Each point's workdir is WORKDIR_ROOT/<readable keys>-<hash>: the readable part is the last
part of each key (more of it where two keys end alike) with its value (shortened, file-name
safe), the hash the first 8 hex digits of the SHA-256 of the full override set (full keys,
values as the config holds them). Values that look alike (a long value cut short, 'a/b' and
'a_b') get different workdirs, while the same point always gets the same one, so rerunning a
sweep resumes every point from its checkpoints. Two points with the same overrides (1e-3 and
0.001 are one value) are an error.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import json
import os
import re

from absl import flags
from ml_collections import config_dict, config_flags

from muse_jax import paths
from muse_jax.configs.cli_flags import flag_error_message, flag_value
from muse_jax.workdir.access import describe

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAN = "sweep.json"  # in WORKDIR_ROOT: the points, written before any of them is submitted
HASH_DIGITS = 8


class SweepError(Exception):
  """A sweep that cannot run as written: one line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Point:
  index: int
  overrides: dict  # full key -> the value as the config holds it
  name: str  # the workdir's base name: readable keys, '-', hash
  workdir: str
  flags: tuple  # the trainer's flags after --config and --workdir: overrides, then extra
  num_steps: int  # train.num_steps of this point's config (with the flags after --)

  @property
  def digest(self) -> str:
    return self.name.rsplit("-", 1)[1]

  @property
  def label(self) -> str:
    """The overrides, short keys: 'learning_rate=0.001 warmup_steps=0'."""
    return " ".join(f"{k.split('.')[-1]}={flag_value(v)}" for k, v in sorted(
        self.overrides.items())) or "(base config)"

  def train_args(self, config: str) -> list[str]:
    return [f"--config={config}", f"--workdir={self.workdir}", *self.flags]


def config_ref(path: str) -> str:
  """The config as the launchers pass it: relative to the repository root when it is in the
  repository (the root is where every launcher runs the trainer, also in the image), else
  absolute."""
  absolute = os.path.abspath(path)
  if not os.path.isfile(absolute):
    raise SweepError(f"--config={path}: no such file")
  relative = os.path.relpath(absolute, REPO)
  return absolute if relative.startswith("..") else relative


def workdir_root(root: str) -> str:
  return root.rstrip("/") if paths.is_url(root) else os.path.abspath(root)


def load_sweep(path: str) -> list[dict]:
  if not os.path.isfile(path):
    raise SweepError(f"--sweep={path}: no such file")
  name = "sweep_" + re.sub(r"\W", "_", os.path.basename(path)[:-3])
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    points = module.get_sweep()
  except Exception as e:  # noqa: BLE001 - whatever the user's file raised, in one line
    lines = str(e).strip().splitlines()
    raise SweepError(f"--sweep={path} does not load: {type(e).__name__}: "
                     f"{lines[-1] if lines else ''}") from None
  if not isinstance(points, (list, tuple)) or not all(
      isinstance(p, dict) and all(isinstance(k, str) for k in p) for p in points):
    raise SweepError(f"--sweep={path}: get_sweep() must return a list of dicts "
                     "{'section.key': value}")
  if not points:
    raise SweepError(f"--sweep={path}: get_sweep() returned no points")
  return list(points)


def parse_config(config_file: str, config_flags_: list[str], where: str):
  """The config that `python -m muse_jax.train --config=FILE FLAGS...` would train."""
  argv = ["sweep", f"--config={config_file}", *config_flags_]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True, sys_argv=argv)
  try:
    values(argv)
    config = values.config
    config.keys()  # a config file that fails to load raises at its first use
  except Exception as e:  # noqa: BLE001 - reported as the flag's problem, in one line
    raise SweepError(f"{where}: {flag_error_message(e, argv)}") from None
  return config


def _set_checked(config, key: str, value, where: str):
  """Assigns `value` to `key` of `config` by ml_collections' type rules; returns the value as
  the config holds it."""
  parts = key.split(".")
  node = config
  for i, part in enumerate(parts):
    if not isinstance(node, config_dict.ConfigDict) or part not in node:
      raise SweepError(f"{where}: no config key {key!r} (no {'.'.join(parts[:i + 1])!r})")
    if i < len(parts) - 1:
      node = node[part]
  old = node[parts[-1]]
  if isinstance(old, config_dict.ConfigDict):
    raise SweepError(f"{where}: {key!r} is a config section; sweep its keys one by one")
  kind = type(old).__name__
  kind = f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"
  if old is not None and isinstance(value, bool) != isinstance(old, bool):
    raise SweepError(f"{where}: {key} is {kind} field; got {type(value).__name__} {value!r}")
  if isinstance(value, str) and "\n" in value:
    raise SweepError(f"{where}: {key}: a value must be one line")
  try:
    node[parts[-1]] = value
  except TypeError:
    raise SweepError(f"{where}: {key} is {kind} field; got {type(value).__name__} "
                     f"{value!r}") from None
  return node[parts[-1]]


def _get(config, key: str):
  for part in key.split("."):
    config = config[part]
  return config


def _readable(value) -> str:
  text = re.sub(r"[^A-Za-z0-9._+-]+", "_", flag_value(value)).strip("_") or "_"
  return text[:24]


def _labels(keys) -> dict[str, str]:
  """Each key by its shortest dotted suffix that no other key ends with: `learning_rate`, but
  `train.batch_size` and `samples.batch_size` where both are swept."""
  parts = {k: k.split(".") for k in keys}
  labels = {}
  for k, p in parts.items():
    n = 1
    while n < len(p) and any(q[-n:] == p[-n:] for j, q in parts.items() if j != k):
      n += 1
    labels[k] = ".".join(p[-n:])
  return labels


def point_name(overrides: dict) -> str:
  canonical = json.dumps(overrides, sort_keys=True, separators=(",", ":"), default=repr)
  digest = hashlib.sha256(canonical.encode()).hexdigest()[:HASH_DIGITS]
  labels = _labels(overrides)
  readable = ",".join(f"{labels[k]}={_readable(v)}" for k, v in sorted(overrides.items()))
  return f"{readable[:96] or 'base'}-{digest}"


def expand(config_path: str, sweep_path: str, root: str, extra=()) -> tuple[str, list[Point]]:
  """The config as passed to the trainer and the sweep's checked points, or SweepError."""
  ref = config_ref(config_path)
  config_file = ref if os.path.isabs(ref) else os.path.join(REPO, ref)
  root = workdir_root(root)
  extra = list(extra)
  extra_config = [a for a in extra if a.startswith("--config.")]
  base = parse_config(config_file, extra_config, "a flag after --")
  fixed = {a.split("=", 1)[0][len("--config."):] for a in extra_config}
  points, seen = [], {}
  for i, raw in enumerate(load_sweep(sweep_path)):
    where = f"sweep point {i} {raw!r}"
    if fixed & set(raw):
      raise SweepError(f"{where}: {sorted(fixed & set(raw))[0]} is also set after --")
    probe = copy.deepcopy(base)
    overrides = {k: _set_checked(probe, k, v, where) for k, v in raw.items()}
    override_flags = [f"--config.{k}={flag_value(v)}" for k, v in sorted(overrides.items())]
    parsed = parse_config(config_file, override_flags + extra_config, where)
    for k, v in overrides.items():
      if repr(_get(parsed, k)) != repr(v):
        raise SweepError(f"{where}: {k}={v!r} does not survive the command line (the trainer "
                         f"would read {_get(parsed, k)!r})")
    name = point_name(overrides)
    digest = name.rsplit("-", 1)[1]
    if digest in seen:
      raise SweepError(f"sweep points {seen[digest]} and {i} are the same point: {overrides!r}")
    seen[digest] = i
    workdir = f"{root}/{name}" if paths.is_url(root) else os.path.join(root, name)
    points.append(Point(i, overrides, name, workdir, tuple(override_flags + extra),
                        int(parsed.train.num_steps)))
  return ref, points


def write_plan(root: str, config: str, sweep_path: str, points: list[Point]) -> str:
  """WORKDIR_ROOT/sweep.json: what --summarize reads, and the record of what was submitted. A
  root that holds a sweep of another config is refused: the same overrides would share
  workdirs."""
  root_path = paths.resolve(workdir_root(root))
  old = read_plan(root, missing_ok=True)
  if old is not None and old["config"] != config:
    raise SweepError(f"{root} holds a sweep of {old['config']}, not {config}; give another "
                     "--workdir_root")
  plan = {"config": config, "sweep": sweep_path,
          "points": [dataclasses.asdict(p) for p in points]}
  try:
    root_path.mkdir(parents=True, exist_ok=True)
    paths.write_atomic(root_path / PLAN, json.dumps(plan, indent=1) + "\n")
  except Exception as e:  # noqa: BLE001 - OSError, or gcsfs' and google-auth's own types
    raise SweepError(f"cannot write {root_path / PLAN}: {describe(e)}") from None
  return str(root_path / PLAN)


def _tuples(value):
  """JSON holds a tuple field's value as a list."""
  return tuple(map(_tuples, value)) if isinstance(value, list) else value


def read_plan(root: str, missing_ok: bool = False) -> dict | None:
  """The plan in WORKDIR_ROOT/sweep.json, its points as `Point`s."""
  path = paths.resolve(workdir_root(root)) / PLAN
  try:
    text = path.read_text() if path.exists() else None
  except Exception as e:  # noqa: BLE001 - OSError, or gcsfs' and google-auth's own types
    raise SweepError(f"cannot read {path}: {describe(e)}") from None
  if text is None:
    if missing_ok:
      return None
    raise SweepError(f"no {path}: launch/sweep.py --config=... --sweep=... "
                     f"--workdir_root={root} writes it")
  try:
    plan = json.loads(text)
    plan["points"] = [Point(**{**p, "flags": tuple(p["flags"]), "overrides": {
        k: _tuples(v) for k, v in p["overrides"].items()}}) for p in plan["points"]]
  except (ValueError, TypeError, KeyError) as e:
    raise SweepError(f"{path} is not a sweep plan: {type(e).__name__}: {e}") from None
  return plan
