"""Launchers (launch/): the dry runs, control flow and lint of the cluster launchers.

No cluster runs here. The SLURM and TPU launchers run for real against stand-ins for `srun`,
`scancel`, `scontrol` and `gcloud` (small shell scripts on PATH that start local processes the
way the real tools start them on nodes and workers), so what is tested is the launchers' own
logic: commands, signals, detachment, pid files and requeueing. Sweeps: test_sweep.py.
"""
import importlib.metadata
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.training.helpers import REPO

LAUNCH = os.path.join(REPO, "launch")
BIN = os.path.join(os.path.dirname(sys.executable))  # hadolint, shellcheck (requirements-test)


def test_launch_scripts_pass_shellcheck_and_the_dockerfile_passes_hadolint():
  scripts = [os.path.join(LAUNCH, s) for s in ("slurm.sbatch", "tpu_pod.sh", "gke.sh")]
  sc = subprocess.run([os.path.join(BIN, "shellcheck"), *scripts], capture_output=True, text=True)
  assert sc.returncode == 0, sc.stdout
  hl = subprocess.run([os.path.join(BIN, "hadolint"), os.path.join(REPO, "Dockerfile")],
                      capture_output=True, text=True)
  assert hl.returncode == 0, hl.stdout


def test_install_extras_are_jax_accelerator_builds_at_the_pinned_version_and_tensorflow():
  with open(os.path.join(REPO, "requirements.txt")) as f:
    pin = next(l.strip() for l in f if l.startswith("jax=="))
  with open(os.path.join(REPO, "requirements-tf.txt")) as f:
    tf_pins = [l.strip() for l in f if l.strip() and not l.startswith("#")]
  out = subprocess.run([sys.executable, "-c", "import runpy, setuptools; setuptools.setup = "
                        "lambda **k: print(k['extras_require']); runpy.run_path('setup.py')"],
                       cwd=REPO, capture_output=True, text=True, check=True).stdout
  version = pin.split("==")[1]
  assert out.strip() == str({"cuda": [f"jax[cuda12]=={version}"], "tpu": [f"jax[tpu]=={version}"],
                             "tf": tf_pins})
  assert [p.split("==")[0] for p in tf_pins] == ["tensorflow-cpu", "tensorflow-datasets"]
  # Both are extras the pinned jax declares (its wheel's metadata).
  assert importlib.metadata.version("jax") == version
  assert {"cuda12", "tpu"} <= set(importlib.metadata.metadata("jax").get_all("Provides-Extra"))


# --- SLURM ---------------------------------------------------------------------------------

def _slurm_env(**extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  env.update(extra)
  return env


def _sbatch_directives() -> dict[str, str]:
  with open(os.path.join(LAUNCH, "slurm.sbatch")) as f:
    lines = [l[len("#SBATCH "):].strip() for l in f if l.startswith("#SBATCH ")]
  return dict(l.split("=", 1) if "=" in l else (l, "") for l in lines)


def test_slurm_dry_run_two_nodes_of_eight_gpus_runs_one_process_per_gpu():
  d = _sbatch_directives()
  assert d["--ntasks-per-node"] == d["--gpus-per-node"] == "8"
  assert "--gpus-per-task" not in d  # its binding hides the GPU JAX's SLURM detection picks
  assert "--requeue" in d and d["--signal"] == "B:USR1@300"
  proc = subprocess.run(
      ["bash", os.path.join(LAUNCH, "slurm.sbatch"), "configs/base_632m.py", "/shared/runs/b",
       "--config.data.path=/shared/my shards"],
      env=_slurm_env(DRY_RUN="1", NODES="2"), capture_output=True, text=True, check=True)
  summary, _, srun = proc.stdout.strip().splitlines()
  assert summary == "# 2 node(s) x 8 task(s) = 16 processes, 16 GPUs (8 per node)"
  cmd = shlex.split(srun)
  assert cmd[:4] == ["srun", "--nodes=2", "--ntasks-per-node=8", "--cpus-per-task=8"]
  assert "--kill-on-bad-exit=0" in cmd
  i = cmd.index("-m")
  assert cmd[i - 1:] == [".venv/bin/python", "-m", "muse_jax.train",
                         "--config=configs/base_632m.py", "--workdir=/shared/runs/b",
                         "--config.data.path=/shared/my shards"]


def test_slurm_dry_run_in_the_container_image_and_with_one_process_per_node():
  run = lambda **env: subprocess.run(  # noqa: E731
      ["bash", os.path.join(LAUNCH, "slurm.sbatch"), "c.py", "/w"], env=_slurm_env(
          DRY_RUN="1", **env), capture_output=True, text=True)
  cmd = shlex.split(run(MUSE_IMAGE="reg/muse_jax:1", MUSE_MOUNTS="/shared:/shared")
                    .stdout.splitlines()[-1])
  assert "--container-image=reg/muse_jax:1" in cmd and "--container-mounts=/shared:/shared" in cmd
  assert "--container-workdir=/opt/muse_jax" in cmd and cmd[cmd.index("-m") - 1] == "python"
  assert "--ntasks-per-node=1" in run(SLURM_NTASKS_PER_NODE="1").stdout
  assert "--cpus-per-task=16" in run(SLURM_CPUS_PER_TASK="16").stdout
  bad = run(SLURM_NTASKS_PER_NODE="4", SLURM_GPUS_ON_NODE="8")
  assert bad.returncode == 2 and "one task per GPU" in bad.stderr


FAKE_SRUN = r"""#!/bin/bash
# Stand-in for srun: starts SLURM_NTASKS_PER_NODE local tasks (SLURM_LOCALID=i) of the command
# after srun's options and returns the highest exit status; on SIGTERM it kills its tasks, as
# the real srun does ("forcing job termination").
while [[ $1 == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS_PER_NODE; i++)); do SLURM_LOCALID=$i "$@" & pids+=($!); done
printf '%s\n' "${pids[@]}" > "$FAKE/tasks"
trap 'echo srun-got-TERM >> "$FAKE/calls"; kill -KILL "${pids[@]}"' TERM
rc=0
for p in "${pids[@]}"; do
  while kill -0 "$p" 2>/dev/null; do wait "$p"; r=$?; done
  wait "$p" 2>/dev/null; r2=$?; [[ $r2 != 127 ]] && r=$r2
  (( r > rc )) && rc=$r
done
exit $rc
"""
FAKE_SCANCEL = r"""#!/bin/bash
# Stand-in for scancel --signal=SIG JOB: signals every task of the job's steps (not the batch
# script, not srun), as slurmd does.
echo "scancel $*" >> "$FAKE/calls"
sig=${1#--signal=}
for p in $(cat "$FAKE/tasks"); do kill -"$sig" "$p"; done
"""
FAKE_TASK = r"""#!/bin/bash
# Stand-in for a training task: checkpoints and exits 143 on SIGTERM.
trap 'touch "$FAKE/saved.$SLURM_LOCALID"; exit 143' TERM
touch "$FAKE/ready.$SLURM_LOCALID"
while :; do sleep 0.05; done
"""


@pytest.fixture
def fake_slurm(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, text in (("srun", FAKE_SRUN), ("scancel", FAKE_SCANCEL), ("task", FAKE_TASK),
                     ("scontrol", '#!/bin/bash\necho "scontrol $*" >> "$FAKE/calls"\n')):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  env = _slurm_env(FAKE=str(tmp_path), PATH=f"{bin_dir}:{os.environ['PATH']}",
                   SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="1", SLURM_NTASKS_PER_NODE="2",
                   SLURM_GPUS_ON_NODE="2", MUSE_PYTHON=str(bin_dir / "task"))
  proc = subprocess.Popen(["bash", os.path.join(LAUNCH, "slurm.sbatch"), "c.py", "/w"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 30
  while not all((tmp_path / f"ready.{i}").exists() for i in range(2)):
    assert time.time() < deadline and proc.poll() is None, "fake tasks did not start"
    time.sleep(0.05)
  yield proc, tmp_path
  if proc.poll() is None:
    proc.kill()
  for pid in (tmp_path / "tasks").read_text().split():
    try:
      os.kill(int(pid), signal.SIGKILL)
    except ProcessLookupError:
      pass


def _calls(fake) -> list[str]:
  path = fake / "calls"
  return path.read_text().splitlines() if path.exists() else []


def test_slurm_time_limit_checkpoints_every_task_then_requeues_the_job(fake_slurm):
  proc, fake = fake_slurm
  proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 sends before the time limit
  out, _ = proc.communicate(timeout=30)
  assert proc.returncode == 143, out
  assert all((fake / f"saved.{i}").exists() for i in range(2)), out
  assert _calls(fake) == ["scancel --signal=TERM 4242", "scontrol requeue 4242"]
  assert "requeueing job 4242" in out


def test_slurm_job_sigterm_lets_the_tasks_save_and_does_not_requeue(fake_slurm):
  """Preemption or scancel: Slurm signals the tasks and the batch script; the script must
  outlive its tasks (dying would end the job before they saved) and leave requeueing to
  Slurm."""
  proc, fake = fake_slurm
  proc.send_signal(signal.SIGTERM)
  time.sleep(0.3)
  assert proc.poll() is None  # still waiting for the tasks
  for pid in (fake / "tasks").read_text().split():
    os.kill(int(pid), signal.SIGTERM)
  out, _ = proc.communicate(timeout=30)
  assert proc.returncode == 143, out
  assert all((fake / f"saved.{i}").exists() for i in range(2))
  assert _calls(fake) == []


# --- TPU VMs -------------------------------------------------------------------------------

def _tpu(*args, env=None, check=True):
  return subprocess.run([os.path.join(LAUNCH, "tpu_pod.sh"), *args], capture_output=True,
                        text=True, check=check, env=env or dict(os.environ, DRY_RUN="1"))


def test_tpu_dry_run_creates_a_v5p_64_slice_of_8_workers_and_starts_detached_on_all():
  create = _tpu("create", "pod", "us-east5-a", "v5p-64", "--spot").stdout.splitlines()
  assert create[0] == ("# v5p-64: 32 chips on 8 worker(s) of 4 chips; 8 JAX processes, "
                       "jax.device_count() = 32")
  assert shlex.split(create[1]) == [
      "gcloud", "compute", "tpus", "tpu-vm", "create", "pod", "--zone=us-east5-a",
      "--accelerator-type=v5p-64", "--version=v2-alpha-tpuv5", "--spot"]
  start = shlex.split(_tpu("start", "pod", "us-east5-a", "r1", "configs/base_3b.py",
                           "gs://b/runs/r1", "--config.data.path=gs://b/my shards").stdout)
  assert start[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=us-east5-a",
                       "--worker=all"]
  remote = start[8].removeprefix("--command=")
  assert "setsid nohup .venv/bin/python -m muse_jax.train" in remote
  assert ">> logs/r1.log 2>&1 < /dev/null &" in remote
  train = shlex.split(remote[remote.index("-m muse_jax.train"):remote.index(">>")])
  assert train == ["-m", "muse_jax.train", "--config=configs/base_3b.py",
                   "--workdir=gs://b/runs/r1", "--config.data.path=gs://b/my shards"]
  assert _tpu("start", "pod", "z", "bad name", "c", "w", check=False).returncode == 2


FAKE_GCLOUD = r"""#!/bin/bash
# Stand-in for `gcloud compute tpus tpu-vm ssh|scp` on a slice of $WORKERS workers: worker w is
# the directory $FAKE/worker$w, used as HOME, and --command runs there in bash.
worker=all; cmd=
for a in "$@"; do
  case $a in --worker=*) worker=${a#--worker=} ;; --command=*) cmd=${a#--command=} ;; esac
done
[[ $4 == ssh ]] || { echo "unexpected: $*" >&2; exit 1; }
if [[ $worker == all ]]; then ws=$(seq 0 $((WORKERS - 1))); else ws=$worker; fi
rc=0
for w in $ws; do (cd "$FAKE/worker$w" && HOME=$PWD bash -c "$cmd") || rc=$?; done
exit $rc
"""
FAKE_TRAINER = r"""#!/bin/bash
# Stand-in for .venv/bin/python: records its arguments, checkpoints and exits 143 on SIGTERM.
printf '%s\n' "$@" > "$HOME/args"
trap 'echo "preempted: checkpoint saved"; exit 143' TERM
echo "training"
while :; do sleep 0.05; done
"""


def test_tpu_start_runs_detached_on_every_worker_then_status_and_stop(tmp_path):
  """start returns while training goes on (in its own session, logging to a file), refuses a
  second start of the same run, and stop makes every worker checkpoint and exit."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
  (bin_dir / "gcloud").chmod(0o755)
  for w in range(2):
    venv = tmp_path / f"worker{w}" / "muse_jax" / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(FAKE_TRAINER)
    (venv / "python").chmod(0o755)
  env = dict(os.environ, FAKE=str(tmp_path), WORKERS="2", PATH=f"{bin_dir}:{os.environ['PATH']}")
  env.pop("DRY_RUN", None)
  pids = []
  try:
    out = _tpu("start", "pod", "z", "r1", "c.py", "gs://b/r1", "--x=a b", env=env).stdout
    assert out.count("started r1 (pid") == 2, out
    for w in range(2):
      home = tmp_path / f"worker{w}"
      pid = int((home / "muse_jax/logs/r1.pid").read_text())
      pids.append(pid)
      deadline = time.time() + 10
      while not (home / "args").exists():  # the trainer runs: setsid has made its session
        assert time.time() < deadline
        time.sleep(0.05)
      assert os.getsid(pid) == pid  # its own session: a closed ssh does not hang it up
      assert (home / "args").read_text().splitlines() == [
          "-m", "muse_jax.train", "--config=c.py", "--workdir=gs://b/r1", "--x=a b"]
    again = _tpu("start", "pod", "z", "r1", "c.py", "gs://b/r1", env=env, check=False)
    assert again.returncode != 0 and "r1 is already running" in again.stdout
    assert _tpu("status", "pod", "z", "r1", env=env).stdout.count("r1 running: training") == 2
    assert _tpu("stop", "pod", "z", "r1", env=env).stdout.count("SIGTERM sent") == 2
    deadline = time.time() + 10
    while any(_alive(p) for p in pids):
      assert time.time() < deadline
      time.sleep(0.05)
    status = _tpu("status", "pod", "z", "r1", env=env).stdout
    assert status.count("r1 stopped: preempted: checkpoint saved") == 2
  finally:
    for p in pids:
      if _alive(p):
        os.kill(p, signal.SIGKILL)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # A zombie (exited, not yet reaped by init) counts as stopped.
  with open(f"/proc/{pid}/stat") as f:
    return f.read().split(")")[-1].split()[0] != "Z"


# --- GKE -----------------------------------------------------------------------------------

def _gke(kind, check=True, **env):
  return subprocess.run([os.path.join(LAUNCH, "gke.sh"), kind, "--dry-run"], capture_output=True,
                        text=True, check=check, env={**os.environ, **env})


def _pod_spec(manifest):
  (job,) = manifest["spec"]["replicatedJobs"]
  return job, job["template"]["spec"], job["template"]["spec"]["template"]["spec"]


def test_gke_gpu_jobset_for_4_nodes_of_8_gpus():
  m = yaml.safe_load(_gke("gpu", NAME="muse-base", IMAGE="reg/muse_jax:1", NUM_NODES="4",
                          CONFIG="configs/base_632m.py", WORKDIR="gs://b/runs/base",
                          ARGS="--config.mesh.fsdp=8").stdout)
  assert m["kind"] == "JobSet" and m["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
  job, spec, pod = _pod_spec(m)
  assert spec["parallelism"] == spec["completions"] == 4 and spec["completionMode"] == "Indexed"
  assert spec["backoffLimit"] == 0
  assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2, 3, 4, 5, 6]
  assert m["spec"]["failurePolicy"]["rules"][0] == {
      "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}
  (c,) = pod["containers"]
  assert c["image"] == "reg/muse_jax:1" and c["workingDir"] == "/opt/muse_jax"
  assert c["resources"]["limits"] == {"nvidia.com/gpu": 8}
  assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
  env = {e["name"]: e for e in c["env"]}
  assert env["PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
      "metadata.annotations['batch.kubernetes.io/job-completion-index']")
  assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
  assert c["command"] == ["bash", "-c"]
  argv = shlex.split(c["args"][0])
  assert argv[:4] == ["exec", "python", "-m", "muse_jax.train"]
  # Pod 0 of JobSet's headless service: <jobset>-<replicatedJob>-<job index>-<pod index>.<jobset>
  assert argv[4:] == [
      "--config=configs/base_632m.py", "--workdir=gs://b/runs/base",
      f"--coordinator_address=muse-base-{job['name']}-0-0.muse-base:1234",
      "--num_processes=4", "--process_id=$(PROCESS_ID)", "--config.mesh.fsdp=8"]


def test_gke_tpu_jobset_for_a_v5p_64_slice():
  m = yaml.safe_load(_gke("tpu", NAME="muse-3b", IMAGE="reg/muse_jax:tpu", NUM_HOSTS="8",
                          TPU_TOPOLOGY="2x4x4", CONFIG="configs/base_3b.py",
                          WORKDIR="gs://b/runs/3b").stdout)
  assert m["metadata"]["annotations"] == {
      "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}
  _, spec, pod = _pod_spec(m)
  assert spec["parallelism"] == spec["completions"] == 8
  assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                                 "cloud.google.com/gke-tpu-topology": "2x4x4"}
  assert pod["hostNetwork"] is True
  (c,) = pod["containers"]
  assert c["resources"]["limits"] == {"google.com/tpu": 4}
  assert shlex.split(c["args"][0]) == ["exec", "python", "-m", "muse_jax.train",
                                       "--config=configs/base_3b.py", "--workdir=gs://b/runs/3b"]


def test_gke_refuses_missing_or_malformed_variables():
  missing = _gke("gpu", check=False, NAME="m", IMAGE="i", CONFIG="c", WORKDIR="w")
  assert missing.returncode == 2 and "error: set NUM_NODES" in missing.stderr
  bad = _gke("gpu", check=False, NAME="m", IMAGE="i", CONFIG="c", WORKDIR="w", NUM_NODES="four")
  assert bad.returncode == 2 and "NUM_NODES=four must be a positive integer" in bad.stderr
  for template in ("gke_jobset.yaml", "gke_jobset_tpu.yaml"):  # every variable was substituted
    kind = "tpu" if "tpu" in template else "gpu"
    out = _gke(kind, NAME="m", IMAGE="i", CONFIG="c", WORKDIR="w", NUM_NODES="1", NUM_HOSTS="1",
               TPU_TOPOLOGY="2x2x1").stdout
    assert not re.search(r"\$\{", out)
