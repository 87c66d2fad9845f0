r"""Sweeps: one training run per point of a sweep file, here, as a SLURM array or as GKE JobSets.

  python launch/sweep.py --config=configs/tiny.py --sweep=configs/sweeps/tiny_lr.py \
      --workdir_root=/tmp/sweep [--launcher=local|slurm|jobset] [--submit] \
      [-- --config.train.num_steps=50 ...]
  python launch/sweep.py --summarize --workdir_root=/tmp/sweep [--format=text|csv|markdown]

A sweep file defines `get_sweep()` returning a list of dicts {"section.key": value}, one per
point. Before anything is written or submitted, every key and value is checked against the
base config (with the flags after --, which go to every point): a key the config lacks, a
value of the wrong type (ml_collections' rules; a str into an int field, a bool into a float
field) or one that would not reach the trainer unchanged stops the sweep with one line naming
the point and the key.

Point i trains into WORKDIR_ROOT/<keys=values>-<hash of the overrides>, the same name every
time, so running a sweep again resumes every point from its own checkpoints, and points that
are done (a checkpoint at their train.num_steps) are left out. WORKDIR_ROOT/sweep.json lists
the points (written before anything is submitted; --summarize reads it).

Launchers (without --submit, each prints what it would run or submit, and runs nothing):
  local   the points here, one after another (MUSE_PYTHON picks the Python). A failed point
          does not stop the others; Ctrl-C or SIGTERM stops the sweep after the running
          point has saved its checkpoint.
  slurm   writes WORKDIR_ROOT/sweep.sbatch, an array job whose task SLURM_ARRAY_TASK_ID runs
          that point through launch/slurm.sbatch (its resources, signals and requeueing), and
          submits `sbatch --array=<points not done> [--sbatch flags] WORKDIR_ROOT/sweep.sbatch`.
  jobset  one GKE JobSet per point, named <--name>-<hash>, rendered by launch/gke.sh from the
          environment (IMAGE, NUM_NODES or NUM_HOSTS and TPU_TOPOLOGY, KSA, ...); printed as
          one YAML stream, or written to --manifests=DIR; --submit runs `kubectl apply`.

--summarize prints one row per point: status, steps, and the final and best training loss
and eval metrics from its metrics.jsonl, best point first (docs/cluster.md, "Sweeps").

Exit status: 0 done; 2 a bad flag, sweep file, point or plan; 130 or 143 a local point was
stopped by Ctrl-C or SIGTERM (rerun to resume); else a failed local point's status, or that
of sbatch or kubectl when they fail.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from muse_jax.sweeps import launchers, summary  # noqa: E402
from muse_jax.sweeps.points import (PLAN, REPO, SweepError, expand, read_plan,  # noqa: E402
                                    write_plan)


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line and status 2, as every muse_jax command
    print(f"error: {message} (launch/sweep.py --help)", file=sys.stderr)
    sys.exit(2)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir_root", required=True, help="the points' workdirs go under it")
  p.add_argument("--config", help="the base config, e.g. configs/tiny.py")
  p.add_argument("--sweep", help="the sweep file, e.g. configs/sweeps/tiny_lr.py")
  p.add_argument("--launcher", choices=("local", "slurm", "jobset"), default="local")
  p.add_argument("--submit", action="store_true",
                 help="run (local) or submit (slurm, jobset); without it, print only")
  p.add_argument("--summarize", action="store_true",
                 help="print the points' results from WORKDIR_ROOT/sweep.json and metrics")
  p.add_argument("--format", choices=summary.FORMATS, default="text", help="of --summarize")
  p.add_argument("--sbatch", default="", metavar="FLAGS",
                 help='slurm: more sbatch flags, e.g. "--nodes=2 --time=24:00:00"')
  p.add_argument("--max_parallel", type=int, default=0, metavar="K",
                 help="slurm: at most K points at once (--array=...%%K); 0 = no limit")
  p.add_argument("--accelerator", choices=("gpu", "tpu"), default="gpu",
                 help="jobset: launch/gke_jobset.yaml (gpu) or gke_jobset_tpu.yaml (tpu)")
  p.add_argument("--name", help="jobset: JobSet name prefix (default: the sweep file's name)")
  p.add_argument("--manifests", metavar="DIR",
                 help="jobset: write one NAME.yaml per point here instead of printing them")
  p.add_argument("extra", nargs=argparse.REMAINDER, help="flags after -- go to every point")
  return p


def _summarize(args) -> int:
  columns, rows = summary.table(read_plan(args.workdir_root)["points"])
  print(summary.format_table(columns, rows, args.format), end="")
  return 0


def _jobsets(args, config, pending) -> int:
  prefix = launchers.jobset_prefix(args.name or os.path.basename(args.sweep)[:-3])
  rendered = launchers.render_jobsets(config, pending, args.accelerator, prefix)
  if args.manifests:
    os.makedirs(args.manifests, exist_ok=True)
    for name, text in rendered:
      with open(os.path.join(args.manifests, f"{name}.yaml"), "w") as f:
        f.write(text)
    cmd = ["kubectl", "apply", "-f", args.manifests]
    print(f"# wrote {len(rendered)} JobSet(s) to {args.manifests}")
    print(shlex.join(cmd))
    return launchers.submit(cmd) if args.submit else 0
  stream = "".join(f"---\n# sweep point {p.index} ({p.label})\n{text.rstrip()}\n"
                   for p, (_, text) in zip(pending, rendered))
  if args.submit:
    return launchers.submit(["kubectl", "apply", "-f", "-"], stdin=stream)
  print(stream, end="")
  return 0


def _run(args) -> int:
  if not args.config or not args.sweep:
    raise SweepError("give --config and --sweep (or --summarize)")
  extra = [a for a in args.extra if a != "--"]
  config, points = expand(args.config, args.sweep, args.workdir_root, extra)
  plan = write_plan(args.workdir_root, config, args.sweep, points)
  pending = [p for p in points if not launchers.done(p)]
  print(f"# {plan}: {len(points)} point(s) of {config}, {len(pending)} not done")
  for p in points:
    if p not in pending:
      print(f"# sweep point {p.index} ({p.label}) is done: {p.num_steps} steps in {p.workdir}")
  if not pending:
    print(f"# nothing to run; results: launch/sweep.py --summarize "
          f"--workdir_root={args.workdir_root}")
    return 0
  if args.launcher == "local":
    if args.submit:
      return launchers.run_local(config, pending)
    print(f"# from {REPO} (--submit runs them here, one after another):")
    for p in pending:
      print(shlex.join(launchers.local_command(config, p)))
    return 0
  if args.launcher == "slurm":
    root = os.path.dirname(plan)
    script = launchers.write_slurm_script(
        root, launchers.slurm_script(config, points, args.sweep, root))
    cmd = launchers.sbatch_command(script, [p.index for p in pending], args.sbatch,
                                   args.max_parallel)
    print(f"# wrote {script}: array task i runs point i of {PLAN}")
    print(shlex.join(cmd))
    return launchers.submit(cmd) if args.submit else 0
  return _jobsets(args, config, pending)


def main(argv=None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.max_parallel < 0:
    parser.error(f"--max_parallel={args.max_parallel}: give 0 (no limit) or more")
  # gcsfs logs a traceback for a storage error that the one-line error below reports.
  logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
  try:
    return _summarize(args) if args.summarize else _run(args)
  except SweepError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
