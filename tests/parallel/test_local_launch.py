"""launch/local.py behaves like a cluster scheduler: one failure stops the job at once,
signals reach every process, and the exit status says what happened. The processes are tiny
Python scripts (no JAX), so each test takes about a second."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Process i reads its role from the i-th comma-separated field of argv[1]: "exitN" exits with
# status N after printing "ready", "sleep" waits; both exit 128 + N on signal N.
CHILD = r"""
import signal, sys, time
i = int(next(a for a in sys.argv if a.startswith("--process_id=")).split("=")[1])
role = sys.argv[1].split(",")[i]
def stop(signum, frame):
  print(f"got signal {signum}", flush=True)
  sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
print("ready", flush=True)
if role.startswith("exit"):
  time.sleep(0.5)
  sys.exit(int(role[4:]))
if role == "kill":
  import os
  time.sleep(0.5)
  os.kill(os.getpid(), signal.SIGKILL)
time.sleep(600)
"""


def launch(roles: str, *flags) -> subprocess.Popen:
  n = len(roles.split(","))
  return subprocess.Popen([sys.executable, "launch/local.py", f"--num_processes={n}", *flags,
                           "--", "-c", CHILD, roles], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def test_a_failing_process_stops_the_others_at_once():
  start = time.time()
  proc = launch("sleep,sleep,exit3")
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 3, out
  assert time.time() - start < 30
  assert "process 2 exited with status 3; stopping the others" in out
  assert "[0] got signal 15" in out and "[1] got signal 15" in out


def test_a_process_killed_by_a_signal_gives_128_plus_the_signal():
  proc = launch("sleep,kill")
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 128 + signal.SIGKILL, out
  assert "[0] got signal 15" in out


def test_others_that_ignore_sigterm_are_killed_after_the_grace_period():
  code = CHILD.replace("signal.signal(signal.SIGTERM, stop)",
                       "signal.signal(signal.SIGTERM, signal.SIG_IGN)")
  proc = subprocess.Popen([sys.executable, "launch/local.py", "--num_processes=2",
                           "--grace=1", "--", "-c", code, "sleep,exit4"], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 4, out


def test_sigterm_and_sigint_reach_every_process_and_set_the_status():
  for signum in (signal.SIGTERM, signal.SIGINT):
    proc = launch("sleep,sleep")
    ready = 0
    while ready < 2:
      line = proc.stdout.readline()
      assert line, "launcher ended early"
      ready += line.endswith("ready\n")
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, out
    assert out.count(f"got signal {int(signum)}") == 2, out


def test_all_succeeding_gives_zero():
  proc = launch("exit0,exit0")
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 0, out
  assert out.count("ready") == 2


def environment_seen(variables: tuple[str, ...], flag: str, unset: str, **env) -> str:
  """What two launched processes print of `variables`, launched with `flag`, `unset` removed
  from and `env` added to the launcher's environment."""
  code = f"import os; print(*(os.environ[v] for v in {variables!r}))"
  env = {**{k: v for k, v in os.environ.items() if k != unset}, **env}
  out = subprocess.run([sys.executable, "launch/local.py", "--num_processes=2", flag, "--",
                        "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=60)
  assert out.returncode == 0, out.stdout + out.stderr
  return out.stdout


def test_a_double_dash_after_the_separator_reaches_the_command():
  out = subprocess.run([sys.executable, "launch/local.py", "--num_processes=1", "--", "-c",
                        "import sys; print(sys.argv[1:3])", "--", "--x=1"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stdout + out.stderr
  assert "['--', '--x=1']" in out.stdout, out.stdout


def test_each_process_gets_its_own_gpus_and_nvlink_multicast_stays_off():
  out = environment_seen(("CUDA_VISIBLE_DEVICES", "NCCL_NVLS_ENABLE"), "--gpus_per_process=2",
                         "NCCL_NVLS_ENABLE", CUDA_VISIBLE_DEVICES="3,5,6,7")
  assert "[0] 3,5 0" in out and "[1] 6,7 0" in out, out


def test_fake_cpu_devices_replace_only_the_device_count_in_xla_flags():
  out = environment_seen(
      ("XLA_FLAGS", "JAX_PLATFORMS"), "--devices_per_process=3", "JAX_PLATFORMS",
      XLA_FLAGS="--xla_dump_to=/tmp/d --xla_force_host_platform_device_count=8")
  for i in range(2):
    assert f"[{i}] --xla_dump_to=/tmp/d --xla_force_host_platform_device_count=3 cpu" in out, out


def test_a_signal_while_processes_are_still_starting_reaches_every_one():
  """The signal comes once the first of many processes is ready, while the launcher may still
  be starting the others: every one must get it (each exits 130, whether its handler was
  installed yet or not), and the launcher must not wait on one that never heard of it."""
  proc = launch(",".join(["sleep"] * 16))
  while not proc.stdout.readline().endswith("ready\n"):
    pass
  proc.send_signal(signal.SIGINT)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 128 + signal.SIGINT, out
