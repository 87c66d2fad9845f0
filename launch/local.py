r"""Run N training processes on this machine, as a multi-host job would (jax.distributed).

  python launch/local.py --num_processes=2 --devices_per_process=4 -- \
      -m muse_jax.train --config=configs/tiny.py --workdir=/tmp/run

Process i gets --coordinator_address=localhost:PORT --num_processes=N --process_id=i (and, on
CPU, --cpu_collectives=gloo with XLA_FLAGS for the fake device count, the caller's other XLA
flags kept; on GPU, --gpus_per_process=K gives process i its own K GPUs through
CUDA_VISIBLE_DEVICES). Output of process i is prefixed with [i]. NVLink multicast stays off
(NCCL_NVLS_ENABLE=0 unless set).

Like a cluster scheduler: as soon as one process exits with a non-zero status, the others are
stopped (SIGTERM, then SIGKILL after --grace seconds), since a multi-process job cannot go on
without it. SIGTERM and SIGINT sent to the launcher are passed to every process (they save a
checkpoint and exit 143 or 130).

Exit status: 0 when every process exited 0; otherwise the status of the first process that
failed (128 + N for a process ended by signal N), or, when the launcher was signalled, that of
the processes' own exit (143 or 130 after their checkpoint).
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def with_device_count(xla_flags: str, devices: int) -> str:
  """`xla_flags` with its fake CPU device count set to `devices` and every other flag kept."""
  kept = [f for f in xla_flags.split()
          if not f.startswith("--xla_force_host_platform_device_count")]
  return " ".join(kept + [f"--xla_force_host_platform_device_count={devices}"])


def _pump(i, stream):
  for line in iter(stream.readline, ""):
    sys.stdout.write(f"[{i}] {line}")
    sys.stdout.flush()


def _status(rc: int) -> int:
  return 128 - rc if rc < 0 else rc  # killed by signal N: 128 + N, as a shell reports it


def _stop(procs, grace: float) -> None:
  """SIGTERM to the processes still running, SIGKILL to those left after `grace` seconds."""
  for p in procs:
    if p.poll() is None:
      p.terminate()
  deadline = time.time() + grace
  for p in procs:
    try:
      p.wait(timeout=max(0.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=0,
                      help="CPU only: fake devices per process (0 = leave XLA_FLAGS alone)")
  parser.add_argument("--gpus_per_process", type=int, default=0,
                      help="GPU only: process i sees GPUs i*K..i*K+K-1 of those visible "
                      "(0 = every process sees every visible GPU)")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0 = any free)")
  parser.add_argument("--grace", type=float, default=60.0,
                      help="seconds the others get to exit after one failed, before SIGKILL")
  parser.add_argument("command", nargs=argparse.REMAINDER,
                      help="python arguments after --, e.g. -m muse_jax.train ...")
  args = parser.parse_args(argv)
  # Only the separator goes: a later "--" belongs to the command (e.g. a sweep's overrides).
  cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not cmd:
    parser.error("give the python command after --")
  port = args.port or free_port()
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast: off, as the other launchers
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  gpus = visible.split(",") if visible else [str(g) for g in range(1024)]
  extra = []
  if args.devices_per_process:
    env["XLA_FLAGS"] = with_device_count(env.get("XLA_FLAGS", ""), args.devices_per_process)
    env.setdefault("JAX_PLATFORMS", "cpu")
    extra = ["--cpu_collectives=gloo"]
  procs, pumps = [], []
  signalled = []  # signals the launcher received, in order
  forwarded = 0  # how many of them went to the processes

  def forward_pending():
    nonlocal forwarded
    while forwarded < len(signalled):
      for p in procs:
        if p.poll() is None:
          p.send_signal(signalled[forwarded])
      forwarded += 1

  # The handler only records the signal and the polling loop below passes it on: sent from
  # the handler, a signal that came while the processes were being started would miss the
  # later ones, which would then run on and keep the launcher waiting.
  previous = {s: signal.signal(s, lambda signum, frame: signalled.append(signum))
              for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    for i in range(args.num_processes):
      full = [sys.executable, *cmd, f"--coordinator_address=localhost:{port}",
              f"--num_processes={args.num_processes}", f"--process_id={i}", *extra]
      # Own process group: a Ctrl-C in the terminal reaches the processes once, through
      # the launcher, not twice (a second Ctrl-C means "stop without saving").
      env_i = dict(env)
      if args.gpus_per_process:
        k = args.gpus_per_process
        env_i["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[i * k:(i + 1) * k])
      p = subprocess.Popen(full, env=env_i, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, start_new_session=True)
      pumps.append(threading.Thread(target=_pump, args=(i, p.stdout), daemon=True))
      pumps[-1].start()
      procs.append(p)
    status = 0
    while [p.poll() for p in procs].count(None):  # polls every process
      forward_pending()
      failed = [p for p in procs if p.returncode]  # in the order they were seen to fail
      if failed and not signalled:
        status = _status(failed[0].returncode)
        print(f"launch/local.py: process {procs.index(failed[0])} exited with status "
              f"{status}; stopping the others", file=sys.stderr, flush=True)
        _stop(procs, args.grace)
        break
      time.sleep(0.1)
    if not status:
      status = next((_status(p.returncode) for p in procs if p.returncode), 0)
  finally:
    _stop(procs, args.grace)
    for s, h in previous.items():
      signal.signal(s, h)
  for t in pumps:
    t.join(timeout=5)
  return status


if __name__ == "__main__":
  sys.exit(main())
