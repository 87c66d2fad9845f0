"""Where a sweep's points run: here one after another, as one SLURM array, or a GKE JobSet each.

Every launcher leaves out the points that are done (a checkpoint at the point's
train.num_steps), so submitting a sweep again runs only the rest, and each of those resumes
from the newest checkpoint in its own workdir. The trainer runs from the repository root (the
image's /opt/muse_jax on GKE), where the config's path is relative to.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys

from muse_jax import paths
from muse_jax.sweeps.points import REPO, Point, SweepError
from muse_jax.workdir.access import describe
from muse_jax.workdir.checkpoints import latest_step

LAUNCH = os.path.join(REPO, "launch")
SLURM_SCRIPT = "sweep.sbatch"  # in WORKDIR_ROOT
STOPPED = (130, 143)  # Ctrl-C, SIGTERM: the point saved a checkpoint; the sweep stops too


def done(point: Point) -> bool:
  try:
    step = latest_step(point.workdir)
  except Exception as e:  # noqa: BLE001 - OSError, or gcsfs' and google-auth's own types
    raise SweepError(f"cannot read the checkpoints of {point.workdir}: {describe(e)}") from None
  return step is not None and step >= point.num_steps


def python() -> str:
  """The Python that runs the trainer: MUSE_PYTHON (as for launch/slurm.sbatch), else this
  one."""
  return os.environ.get("MUSE_PYTHON", sys.executable)


# --- here ----------------------------------------------------------------------------------

def local_command(config: str, point: Point) -> list[str]:
  return [python(), "-m", "muse_jax.train", *point.train_args(config)]


def _run(cmd: list[str]) -> int:
  """Runs the trainer in its own session and passes SIGINT and SIGTERM on to it, so that a
  Ctrl-C reaches it once and it saves a checkpoint before exiting (subprocess.call would kill
  it on Ctrl-C instead). Returns its status (128 + N when signal N ended it)."""
  proc = None
  early = []  # signals that came before the trainer was started: passed on once it is

  def forward(signum, frame):
    if proc is None:
      early.append(signum)
    else:
      proc.send_signal(signum)

  # Installed before the trainer starts: a Ctrl-C in between would otherwise end this process
  # and leave the trainer, in its own session, running on.
  previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
    for signum in early:
      proc.send_signal(signum)
    rc = proc.wait()
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  return 128 - rc if rc < 0 else rc


def run_local(config: str, points: list[Point]) -> int:
  """Runs the points one after another. A point that fails does not stop the others; a point
  stopped by Ctrl-C or SIGTERM (after its checkpoint) stops the sweep. Returns 0, the status
  that stopped the sweep, or the first failed point's status."""
  failed = []
  for p in points:
    cmd = local_command(config, p)
    print(f"sweep point {p.index} ({p.label}): {shlex.join(cmd)}", flush=True)
    status = _run(cmd)
    if status in STOPPED:
      print(f"sweep stopped in point {p.index} (status {status}); run the same command again "
            "to resume", file=sys.stderr)
      return status
    if status:
      failed.append((p, status))
  for p, status in failed:
    print(f"error: sweep point {p.index} ({p.label}) exited with status {status}; its output "
          f"is above, its workdir {p.workdir}", file=sys.stderr)
  return failed[0][1] if failed else 0


# --- SLURM ---------------------------------------------------------------------------------

def array_spec(indices: list[int]) -> str:
  """sbatch --array's list for `indices`: [0, 1, 2, 5] -> '0-2,5'."""
  ranges: list[list[int]] = []
  for i in sorted(indices):
    if ranges and i == ranges[-1][1] + 1:
      ranges[-1][1] = i
    else:
      ranges.append([i, i])
  return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in ranges)


def _quote(word: str) -> str:
  """`word` in single quotes for bash, always (shlex.quote leaves 'a,b' bare, which reads
  like a mistake in an array)."""
  return "'" + word.replace("'", "'\"'\"'") + "'"


def slurm_script(config: str, points: list[Point], sweep_path: str, root: str) -> str:
  """The array job script: task SLURM_ARRAY_TASK_ID runs point SLURM_ARRAY_TASK_ID through
  launch/slurm.sbatch, whose resources, signals and requeueing it takes over (its #SBATCH
  lines are copied here: sbatch reads only the submitted script's). Its log goes to
  ROOT/muse_jax-sweep-<job>_<task>.out, appended to when the task is requeued."""
  with open(os.path.join(LAUNCH, "slurm.sbatch")) as f:
    directives = [line.rstrip("\n") for line in f if line.startswith("#SBATCH ") and not
                  re.match(r"#SBATCH --(job-name|output)=", line)]
  last = len(points) - 1
  cases = [f"  {p.index}) point=({' '.join(map(_quote, [config, p.workdir, *p.flags]))}) ;;"
           for p in points]
  return "\n".join([
      "#!/bin/bash",
      f"# Sweep {sweep_path} of {config}: {len(points)} points, one SLURM array task each.",
      "# Written by launch/sweep.py, which submits it with `sbatch --array=...` (the points not",
      "# done yet); WORKDIR_ROOT/sweep.json lists the points. Each task runs its point through",
      "# launch/slurm.sbatch: one process per GPU, checkpoint and requeue at the time limit; a",
      "# task submitted again resumes its point from the point's workdir.",
      "#SBATCH --job-name=muse_jax-sweep",
      f"#SBATCH --output={root}/%x-%A_%a.out",
      f"#SBATCH --array=0-{last}",
      *directives,
      "set -euo pipefail",
      f"cd {shlex.quote(REPO)}",
      'case ${SLURM_ARRAY_TASK_ID:-} in',
      *cases,
      f'  *) echo "error: SLURM_ARRAY_TASK_ID=${{SLURM_ARRAY_TASK_ID:-(unset)}}: this sweep\'s '
      f'points are 0-{last} (sbatch --array=0-{last})" >&2',
      "     exit 2 ;;",
      "esac",
      f'echo "muse_jax sweep: point $SLURM_ARRAY_TASK_ID of 0-{last}, workdir ${{point[1]}}"',
      'exec bash launch/slurm.sbatch "${point[@]}"',
      ""])


def write_slurm_script(root: str, text: str) -> str:
  if paths.is_url(root):
    raise SweepError(f"--launcher=slurm needs a --workdir_root on a file system the nodes "
                     f"share, not {root}")
  path = os.path.join(root, SLURM_SCRIPT)
  try:
    paths.write_atomic(path, text)
  except OSError as e:
    raise SweepError(f"cannot write {path}: {e}") from None
  return path


def sbatch_command(script: str, indices: list[int], sbatch_args: str = "",
                   max_parallel: int = 0) -> list[str]:
  array = array_spec(indices) + (f"%{max_parallel}" if max_parallel else "")
  return ["sbatch", f"--array={array}", *shlex.split(sbatch_args), script]


# --- GKE JobSet ----------------------------------------------------------------------------

def jobset_prefix(name: str) -> str:
  """A DNS-label prefix for the JobSet names (NAME-<hash> must stay short: JobSet and
  Kubernetes derive pod and service names from it)."""
  prefix = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:30].strip("-")
  return prefix if prefix[:1].isalpha() else f"sweep-{prefix}".strip("-")


def render_jobsets(config: str, points: list[Point], accelerator: str,
                   prefix: str) -> list[tuple[str, str]]:
  """(name, manifest) of one JobSet per point, each rendered by launch/gke.sh from the
  environment's IMAGE, NUM_NODES or NUM_HOSTS/TPU_TOPOLOGY, KSA, ... (gke.sh checks them)."""
  if os.path.isabs(config):
    raise SweepError(f"--launcher=jobset needs a config in this repository (the image runs "
                     f"it from /opt/muse_jax), not {config}")
  out = []
  for p in points:
    name = f"{prefix}-{p.digest}"
    env = dict(os.environ, NAME=name, CONFIG=config, WORKDIR=p.workdir,
               ARGS=shlex.join(p.flags))
    proc = subprocess.run(["bash", os.path.join(LAUNCH, "gke.sh"), accelerator, "--dry-run"],
                          env=env, capture_output=True, text=True)
    if proc.returncode:
      lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
      raise SweepError(f"launch/gke.sh {accelerator}: {lines[-1].removeprefix('error: ')}")
    # The template's header comment once per point would bury the points: left out.
    lines = proc.stdout.splitlines(keepends=True)
    out.append((name, "".join(lines[next(i for i, l in enumerate(lines)
                                         if not l.startswith("#")):])))
  return out


def submit(cmd: list[str], stdin: str | None = None) -> int:
  print(f"+ {shlex.join(cmd)}", flush=True)
  try:
    return subprocess.run(cmd, input=stdin, text=True).returncode
  except FileNotFoundError:
    raise SweepError(f"{cmd[0]} is not on PATH (run without --submit to print what would be "
                     "submitted)") from None
