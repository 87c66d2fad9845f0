r"""Run N training processes on this machine, as a multi-host job would (jax.distributed).

  python launch/local.py --num_processes=2 --devices_per_process=4 -- \
      -m muse_jax.train --config=configs/tiny.py --workdir=/tmp/run

Process i gets --coordinator_address=localhost:PORT --num_processes=N --process_id=i (and, on
CPU, --cpu_collectives=gloo with XLA_FLAGS for the fake device count). Output of process i is
prefixed with [i]. The launcher exits with the first non-zero status (and stops the others),
so it behaves like a cluster scheduler for local testing of multi-process code paths.
"""
import argparse
import os
import socket
import subprocess
import sys
import threading


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _pump(i, stream):
  for line in iter(stream.readline, ""):
    sys.stdout.write(f"[{i}] {line}")
    sys.stdout.flush()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=0,
                      help="CPU only: fake devices per process (0 = leave XLA_FLAGS alone)")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0 = any free)")
  parser.add_argument("command", nargs=argparse.REMAINDER,
                      help="python arguments after --, e.g. -m muse_jax.train ...")
  args = parser.parse_args(argv)
  cmd = [a for a in args.command if a != "--"]
  if not cmd:
    parser.error("give the python command after --")
  port = args.port or free_port()
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  extra = []
  if args.devices_per_process:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices_per_process}"
    env.setdefault("JAX_PLATFORMS", "cpu")
    extra = ["--cpu_collectives=gloo"]
  procs = []
  for i in range(args.num_processes):
    full = [sys.executable, *cmd, f"--coordinator_address=localhost:{port}",
            f"--num_processes={args.num_processes}", f"--process_id={i}", *extra]
    p = subprocess.Popen(full, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    threading.Thread(target=_pump, args=(i, p.stdout), daemon=True).start()
    procs.append(p)
  status = 0
  for p in procs:
    rc = p.wait()
    if rc and not status:
      status = rc
      for q in procs:
        if q.poll() is None:
          q.terminate()
  return status


if __name__ == "__main__":
  sys.exit(main())
