"""launch/sweep.py: points checked against the config, workdir names, the three launchers and
the results table.

No cluster runs here: `sbatch`, `srun` and `kubectl` are stand-ins on PATH (small scripts that
record their arguments, or run the command here). The SLURM array script itself runs for real:
its task selection, then launch/slurm.sbatch; one test trains a real point through it.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.training.helpers import REPO, cli_env

sys.path.insert(0, os.path.join(REPO, "launch"))
import sweep  # noqa: E402

from muse_jax.sweeps.points import SweepError, expand, read_plan  # noqa: E402

TINY = os.path.join(REPO, "configs/tiny.py")
TINY_LR = os.path.join(REPO, "configs/sweeps/tiny_lr.py")
SHELLCHECK = os.path.join(os.path.dirname(sys.executable), "shellcheck")


def _sweep_file(tmp_path, points, name="s.py") -> str:
  path = tmp_path / name
  path.write_text(f"inf = float('inf')\n\n\ndef get_sweep():\n  return {points!r}\n")
  return str(path)


def _main(capsys, *argv):
  rc = sweep.main(list(argv))
  out, err = capsys.readouterr()
  return rc, out, err


def _bin(tmp_path, **scripts) -> str:
  """A directory of stand-in commands for PATH."""
  d = tmp_path / "bin"
  d.mkdir(exist_ok=True)
  for name, text in scripts.items():
    (d / name).write_text(text)
    (d / name).chmod(0o755)
  return f"{d}:{os.environ['PATH']}"


RECORD = '#!/bin/bash\nprintf "%s\\n" "$(basename "$0") $*" >> "$FAKE/calls"\ncat > /dev/null\n'


# --- points ----------------------------------------------------------------------------------

def test_workdir_names_are_readable_hashed_stable_and_never_collide(tmp_path):
  _, points = expand(TINY, TINY_LR, "/runs")
  assert [p.index for p in points] == [0, 1, 2, 3]
  assert re.fullmatch(r"learning_rate=0\.001,warmup_steps=0-[0-9a-f]{8}", points[0].name)
  assert points[0].workdir == f"/runs/{points[0].name}"
  assert points[2].flags == ("--config.optimizer.learning_rate=0.003",
                             "--config.optimizer.warmup_steps=0")
  _, again = expand(TINY, TINY_LR, "/runs")  # a rerun finds the same workdirs
  assert [p.name for p in again] == [p.name for p in points]
  # Values that read alike get their own workdirs: the hash is of the full values.
  long = "x" * 40
  alike = _sweep_file(tmp_path, [{"data.path": "a/b"}, {"data.path": "a_b"},
                                 {"data.path": long + "1"}, {"data.path": long + "2"}])
  _, points = expand(TINY, alike, "gs://b/s")
  names = [p.name for p in points]
  assert names[0][:-9] == names[1][:-9] and names[2][:-9] == names[3][:-9]
  assert len(set(names)) == 4 and points[0].workdir == f"gs://b/s/{names[0]}"
  # An int into a float field is that float: the same point as the float itself.
  same = _sweep_file(tmp_path, [{"optimizer.learning_rate": 1}, {"optimizer.learning_rate": 1.0}])
  with pytest.raises(SweepError, match="sweep points 0 and 1 are the same point"):
    expand(TINY, same, "/runs")
  # Keys that end alike are named by as much of their path as tells them apart.
  two = _sweep_file(tmp_path, [{"train.batch_size": 8, "eval.samples.batch_size": 4}])
  (p,) = expand(TINY, two, "/runs")[1]
  assert p.name.startswith("samples.batch_size=4,train.batch_size=8-"), p.name
  one = _sweep_file(tmp_path, [{"optimizer.learning_rate": 1, "mesh.rules": (("a", None),)}])
  (p,) = expand(TINY, one, "/runs")[1]
  assert p.flags == ("--config.mesh.rules=(('a', None),)", "--config.optimizer.learning_rate=1.0")


@pytest.mark.parametrize("point, extra, message", [
    ({"train.num_steps": "10"}, [], "train.num_steps is an int field; got str '10'"),
    ({"optimizer.learning_rate": "1e-3"}, [], "optimizer.learning_rate is a float field; got str"),
    ({"optimizer.learning_rate": True}, [], "optimizer.learning_rate is a float field; got bool"),
    ({"optimizer.warmup_steps": 2.5}, [], "optimizer.warmup_steps is an int field; got float 2.5"),
    ({"model.fp8_matmuls": 1}, [], "model.fp8_matmuls is a bool field; got int 1"),
    ({"optimizer.learning_rat": 1e-3}, [], "no config key 'optimizer.learning_rat'"),
    ({"model": {"hidden_size": 8}}, [], "'model' is a config section"),
    ({"data.path": "a\nb"}, [], "data.path: a value must be one line"),
    ({"mesh.rules": (float("inf"),)}, [], "mesh.rules=(inf,) does not survive the command line"),
    ({"seed": 1}, ["--config.seed=2"], "seed is also set after --"),
    ({"seed": 1}, ["--config.train.num_steps=ten"], "a flag after --: "),
])
def test_a_bad_point_stops_the_sweep_in_one_line_before_anything_is_written(
    tmp_path, capsys, point, extra, message):
  bad = _sweep_file(tmp_path, [{"train.log_every": 1}, point])
  root = tmp_path / "root"
  rc, out, err = _main(capsys, f"--config={TINY}", f"--sweep={bad}", f"--workdir_root={root}",
                       "--", *extra)
  assert rc == 2 and out == ""
  assert len(err.splitlines()) == 1 and message in err, err
  assert ("flag after --" in message or err.startswith("error: sweep point 1 ")), err
  assert not root.exists()


def test_usage_errors_are_one_line_with_status_2(tmp_path, capsys):
  for argv, message in [(["--launcher=pbs", "--workdir_root=r"], "invalid choice: 'pbs'"),
                        (["--workdir_root=r"], "give --config and --sweep"),
                        (["--summarize", f"--workdir_root={tmp_path}"], "sweep.json: launch/"),
                        ([f"--config={TINY}", "--sweep=nope.py", "--workdir_root=r"],
                         "--sweep=nope.py: no such file"),
                        ([f"--config={TINY}", f"--sweep={_sweep_file(tmp_path, [])}",
                          "--workdir_root=r"], "get_sweep() returned no points")]:
    try:
      rc, _, err = _main(capsys, *argv)
    except SystemExit as e:  # argparse
      rc, err = e.code, capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, (argv, err)
  with pytest.raises(SystemExit) as e:
    sweep.main(["--help"])
  assert e.value.code == 0 and "--launcher" in capsys.readouterr().out


# --- SLURM -----------------------------------------------------------------------------------

def test_slurm_array_task_runs_its_point_through_slurm_sbatch(tmp_path, capsys, monkeypatch):
  """Dry run: the sbatch command and the array script; each task id selects its point and runs
  launch/slurm.sbatch on it (its own dry run prints the srun command); --submit calls sbatch."""
  root = tmp_path / "root"
  argv = [f"--config={TINY}", f"--sweep={TINY_LR}", f"--workdir_root={root}", "--launcher=slurm",
          "--sbatch=--nodes=2 --time=4:00:00", "--max_parallel=2", "--",
          "--config.train.num_steps=50"]
  rc, out, _ = _main(capsys, *argv)
  script = str(root / "sweep.sbatch")
  assert rc == 0 and out.splitlines()[-1] == (
      f"sbatch --array=0-3%2 --nodes=2 --time=4:00:00 {script}")
  assert subprocess.run([SHELLCHECK, script], capture_output=True, text=True).returncode == 0
  text = open(script).read()
  for directive in ("--array=0-3", "--requeue", "--signal=B:USR1@300", "--open-mode=append",
                    f"--output={root}/%x-%A_%a.out"):
    assert f"#SBATCH {directive}\n" in text
  points = read_plan(str(root))["points"]
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  for p in points:
    proc = subprocess.run(["bash", script], env=dict(env, DRY_RUN="1", NODES="2",
                                                     SLURM_ARRAY_TASK_ID=str(p.index)),
                          capture_output=True, text=True, check=True)
    srun = shlex.split(proc.stdout.splitlines()[-1])
    assert srun[:3] == ["srun", "--nodes=2", "--ntasks-per-node=8"]
    assert srun[srun.index("-m"):] == ["-m", "muse_jax.train", "--config=configs/tiny.py",
                                       f"--workdir={p.workdir}", *p.flags]
    assert p.flags[-1] == "--config.train.num_steps=50" and p.num_steps == 50
  bad = subprocess.run(["bash", script], env=dict(env, SLURM_ARRAY_TASK_ID="4"),
                       capture_output=True, text=True)
  assert bad.returncode == 2 and bad.stderr == (
      "error: SLURM_ARRAY_TASK_ID=4: this sweep's points are 0-3 (sbatch --array=0-3)\n")
  monkeypatch.setenv("PATH", _bin(tmp_path, sbatch=RECORD))
  monkeypatch.setenv("FAKE", str(tmp_path))
  rc, out, _ = _main(capsys, *argv[:3], "--launcher=slurm", "--submit")
  assert rc == 0 and (tmp_path / "calls").read_text() == f"sbatch --array=0-3 {script}\n"


FAKE_SRUN = r"""#!/bin/bash
# Stand-in for srun on one node with one task: runs the command after srun's options here,
# without the job's SLURM_* variables (there is no job step around it).
while [[ $1 == --* ]]; do shift; done
for v in $(compgen -e | grep '^SLURM_'); do unset "$v"; done
exec "$@"
"""


def test_a_real_point_trained_by_its_array_task_is_summarized_and_left_out_after(
    tmp_path, capsys):
  """One real 2-step training (the slow part: a JAX start and compile), run by task 1 of the
  array script through launch/slurm.sbatch; --summarize then reads what the trainer wrote, and
  a second submission leaves the finished point out."""
  root = tmp_path / "root"
  two = _sweep_file(tmp_path, [{"optimizer.learning_rate": 1e-3},
                               {"optimizer.learning_rate": 3e-3}])
  argv = [f"--config={TINY}", f"--sweep={two}", f"--workdir_root={root}", "--launcher=slurm",
          "--", "--config.train.num_steps=2", "--config.train.eval_every=0",
          "--config.train.tensorboard=false"]
  assert _main(capsys, *argv)[0] == 0
  env = {k: v for k, v in cli_env(devices=1).items() if not k.startswith("SLURM_")}
  env.update(PATH=_bin(tmp_path, srun=FAKE_SRUN), MUSE_PYTHON=sys.executable,
             SLURM_ARRAY_TASK_ID="1", SLURM_JOB_ID="7", SLURM_JOB_NUM_NODES="1",
             SLURM_NTASKS_PER_NODE="1", SLURM_GPUS_ON_NODE="1")
  proc = subprocess.run(["bash", str(root / "sweep.sbatch")], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  p0, p1 = read_plan(str(root))["points"]
  assert "Done: 2 steps" in proc.stdout and p1.workdir in proc.stdout
  losses = [json.loads(line)["loss"] for line in open(os.path.join(p1.workdir, "metrics.jsonl"))]
  rc, out, _ = _main(capsys, "--summarize", f"--workdir_root={root}", "--format=csv")
  rows = out.splitlines()
  assert rows[0] == "#,point,status,step,loss,best loss,workdir"
  assert rows[1:] == [f"1,learning_rate=0.003,done,2/2,{losses[-1]!r},{min(losses)!r},"
                      f"{p1.workdir}", f"0,learning_rate=0.001,not started,0/2,,,{p0.workdir}"]
  rc, out, _ = _main(capsys, *argv)
  assert rc == 0 and out.splitlines()[-1].startswith("sbatch --array=0 ")
  assert f"# sweep point 1 (learning_rate=0.003) is done: 2 steps in {p1.workdir}" in out


# --- GKE JobSet ------------------------------------------------------------------------------

def test_jobset_per_point_printed_written_and_applied(tmp_path, capsys, monkeypatch):
  for k, v in dict(IMAGE="reg/muse_jax:1", NUM_NODES="2", FAKE=str(tmp_path)).items():
    monkeypatch.setenv(k, v)
  root, manifests = "gs://bucket/sweeps/lr", tmp_path / "jobsets"
  _, points = expand(TINY, TINY_LR, root)
  # The plan goes to WORKDIR_ROOT, here a local stand-in for the bucket: gs:// needs GCS.
  local_root = str(tmp_path / "root")
  argv = [f"--config={TINY}", f"--sweep={TINY_LR}", f"--workdir_root={local_root}",
          "--launcher=jobset", "--name=LR sweep"]
  rc, out, _ = _main(capsys, *argv)
  docs = list(yaml.safe_load_all(out[out.index("---"):]))
  assert rc == 0 and len(docs) == 4
  rc, out, _ = _main(capsys, *argv, f"--manifests={manifests}")
  assert out.splitlines()[-1] == f"kubectl apply -f {manifests}"
  files = sorted(os.listdir(manifests))
  names = sorted(d["metadata"]["name"] for d in docs)
  assert files == [f"{n}.yaml" for n in names]
  for p in read_plan(local_root)["points"]:
    (m,) = [yaml.safe_load(open(manifests / f)) for f in files if p.digest in f]
    assert m["kind"] == "JobSet" and m["metadata"]["name"] == f"lr-sweep-{p.digest}"
    (c,) = m["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"]
    argv_ = shlex.split(c["args"][0])
    assert argv_[:6] == ["exec", "python", "-m", "muse_jax.train", "--config=configs/tiny.py",
                         f"--workdir={p.workdir}"]
    assert argv_[-len(p.flags):] == list(p.flags) and c["image"] == "reg/muse_jax:1"
  monkeypatch.setenv("PATH", _bin(tmp_path, kubectl=RECORD))
  assert _main(capsys, *argv, f"--manifests={manifests}", "--submit")[0] == 0
  assert _main(capsys, *argv, "--submit")[0] == 0
  assert (tmp_path / "calls").read_text() == f"kubectl apply -f {manifests}\nkubectl apply -f -\n"
  monkeypatch.delenv("IMAGE")
  rc, _, err = _main(capsys, *argv)
  assert rc == 2 and err == ("error: launch/gke.sh gpu: set IMAGE (launch/gke.sh gpu needs NAME "
                             "IMAGE NUM_NODES CONFIG WORKDIR)\n")
  assert points[0].workdir.startswith("gs://bucket/sweeps/lr/learning_rate=0.001")


# --- here ------------------------------------------------------------------------------------

FAKE_TRAINER = r"""#!/bin/bash
# Stand-in for python: records its workdir, fails the first point, waits in the second one
# until SIGTERM (then "checkpoints" and exits 143), and finishes any other at once.
for a in "$@"; do [[ $a == --workdir=* ]] && wd=${a#--workdir=}; done
echo "$wd" >> "$FAKE/calls"
case $wd in
  *learning_rate=0.001,warmup_steps=0-*) exit 3 ;;
  *learning_rate=0.001,warmup_steps=10-*)
    [[ -n ${HANG:-} ]] || exit 0
    trap 'exit 143' TERM; touch "$FAKE/ready"; while :; do sleep 0.05; done ;;
esac
"""


def test_local_sweep_runs_every_point_and_a_sigterm_stops_it(tmp_path, capsys, monkeypatch):
  """A failed point does not stop the others; SIGTERM goes to the running point, which saves
  and exits 143, and the sweep stops there with that status."""
  fake = tmp_path / "bin" / "python"
  _bin(tmp_path, python=FAKE_TRAINER)
  monkeypatch.setenv("MUSE_PYTHON", str(fake))
  monkeypatch.setenv("FAKE", str(tmp_path))
  root = tmp_path / "root"
  argv = [f"--config={TINY}", f"--sweep={TINY_LR}", f"--workdir_root={root}"]
  rc, out, err = _main(capsys, *argv)  # a dry run prints the commands
  points = read_plan(str(root))["points"]
  assert rc == 0 and out.splitlines()[2:] == [
      shlex.join([str(fake), "-m", "muse_jax.train", "--config=configs/tiny.py",
                  f"--workdir={p.workdir}", *p.flags]) for p in points]
  rc, out, err = _main(capsys, *argv, "--submit")
  assert rc == 3 and (tmp_path / "calls").read_text().split() == [p.workdir for p in points]
  assert err == (f"error: sweep point 0 (learning_rate=0.001 warmup_steps=0) exited with "
                 f"status 3; its output is above, its workdir {points[0].workdir}\n")
  (tmp_path / "calls").unlink()
  proc = subprocess.Popen([sys.executable, os.path.join(REPO, "launch/sweep.py"), *argv,
                           "--submit"], env=dict(os.environ, HANG="1"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 60
  while not (tmp_path / "ready").exists():
    assert time.time() < deadline and proc.poll() is None, proc.communicate()
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == 143, err
  assert (tmp_path / "calls").read_text().split() == [p.workdir for p in points[:2]]
  assert err.splitlines()[-1] == ("sweep stopped in point 1 (status 143); run the same command "
                                  "again to resume")


# --- results ---------------------------------------------------------------------------------

def test_summarize_prints_final_and_best_metrics_per_point_best_first(tmp_path, capsys):
  root = tmp_path / "root"
  sweep.main([f"--config={TINY}", f"--sweep={TINY_LR}", f"--workdir_root={root}", "--",
              "--config.train.num_steps=3"])
  capsys.readouterr()
  p = read_plan(str(root))["points"]
  logs = {  # as the trainer writes them: every step's loss, eval records with eval_ names
      0: [{"step": 1, "loss": 4.0, "accuracy": 0.1}, {"step": 2, "loss": 3.0},
          {"step": 2, "eval_loss": 3.5, "eval_accuracy": 0.2}],
      2: [{"step": 1, "loss": 4.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 2.5},
          {"step": 3, "eval_loss": 2.25, "eval_accuracy": 0.5}]}
  for i, records in logs.items():
    os.makedirs(p[i].workdir)
    with open(os.path.join(p[i].workdir, "metrics.jsonl"), "w") as f:
      f.write("".join(json.dumps(r) + "\n" for r in records) + '{"step": 4, "lo')  # torn
  rc, out, _ = _main(capsys, "--summarize", f"--workdir_root={root}")
  assert rc == 0 and out.splitlines() == [
      "#  point                                status       step  loss  best loss  "
      "eval_accuracy  best eval_accuracy  eval_loss  best eval_loss",
      "2  learning_rate=0.003 warmup_steps=0   done          3/3   2.5          2  "
      "          0.5                 0.5       2.25            2.25",
      "0  learning_rate=0.001 warmup_steps=0   unfinished    2/3     3          3  "
      "          0.2                 0.2        3.5             3.5",
      "1  learning_rate=0.001 warmup_steps=10  not started   0/3     -          -  "
      "            -                   -          -               -",
      "3  learning_rate=0.003 warmup_steps=10  not started   0/3     -          -  "
      "            -                   -          -               -"]
  rc, out, _ = _main(capsys, "--summarize", f"--workdir_root={root}", "--format=markdown")
  lines = out.splitlines()
  assert lines[1] == "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"
  assert lines[2] == ("| 2 | learning_rate=0.003 warmup_steps=0 | done | 3/3 | 2.5 | 2 | 0.5 | 0.5 "
                      "| 2.25 | 2.25 |")
