r"""Config-driven sweeps: expand a sweep file into one training command per point.

  python launch/sweep.py --config=configs/tiny.py --sweep=configs/sweeps/tiny_lr.py \
      --workdir_root=/tmp/sweep [--run] [-- extra --config.x=y flags]

A sweep file defines `get_sweep()` returning a list of dicts {"section.key": value}. Every
key is checked against the base config before anything runs (a typo fails the whole sweep),
and each point gets its own workdir named after its overrides, so rerunning the sweep resumes
each point from its checkpoints. Without --run the commands are printed (pipe them to a
scheduler); with --run they run one after another here.
"""
import argparse
import importlib.util
import os
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_module(path: str):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def point_name(overrides: dict) -> str:
  parts = []
  for k, v in sorted(overrides.items()):
    parts.append(f"{k.split('.')[-1]}={v}")
  return ",".join(parts).replace("/", "_") or "default"


def check_keys(config, overrides: dict):
  for key in overrides:
    node = config
    for part in key.split("."):
      if part not in node:
        raise SystemExit(f"sweep key {key!r} is not in the config (no {part!r}); fix the sweep")
      node = node[part]


def expand(config_path: str, sweep_path: str, workdir_root: str, extra=()) -> list[list[str]]:
  config = load_module(config_path).get_config()
  points = load_module(sweep_path).get_sweep()
  names = set()
  cmds = []
  for overrides in points:
    check_keys(config, overrides)
    name = point_name(overrides)
    if name in names:
      raise SystemExit(f"two sweep points have the same overrides: {name}")
    names.add(name)
    cmd = [sys.executable, "-m", "muse_jax.train", f"--config={config_path}",
           f"--workdir={os.path.join(workdir_root, name)}"]
    cmd += [f"--config.{k}={v}" for k, v in sorted(overrides.items())]
    cmds.append(cmd + list(extra))
  return cmds


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True)
  p.add_argument("--sweep", required=True)
  p.add_argument("--workdir_root", required=True)
  p.add_argument("--run", action="store_true", help="run the points here, one after another")
  p.add_argument("extra", nargs=argparse.REMAINDER, help="flags after -- go to every point")
  args = p.parse_args(argv)
  extra = [a for a in args.extra if a != "--"]
  cmds = expand(args.config, args.sweep, args.workdir_root, extra)
  for i, cmd in enumerate(cmds):
    print(shlex.join(cmd), flush=True)
    if args.run:
      rc = subprocess.call(cmd)
      if rc:
        print(f"sweep point {i} failed with status {rc}", file=sys.stderr)
        return rc
  return 0


if __name__ == "__main__":
  sys.exit(main())
