r"""Weak scaling of a training step over 1..N devices, and sharded checkpoints across counts.

  python benchmarks/scaling.py                         # base_632m, 64 per device, 1,2,4 GPUs
  python benchmarks/scaling.py --config=configs/base_3b.py --meshes=fsdp --gpus=2,4 --no_checkpoint
  python benchmarks/scaling.py --tiny --gpus=1,2      # configs/tiny.py on CPU fake devices
  python benchmarks/scaling.py --layouts=            # the checkpoint check alone
  python benchmarks/scaling.py --layouts= --no_checkpoint --precompute   # precompute alone

Every row is one run of benchmarks/train_step.py (fixed synthetic batch, real jitted step) at a
global batch of --per_device_batch x N, in two layouts:
- `1 proc`: one process that sees N devices (CUDA_VISIBLE_DEVICES on GPU,
  --xla_force_host_platform_device_count on CPU);
- `N procs`: N processes of one device each under launch/local.py (jax.distributed over NCCL on
  GPU, gloo on CPU; NCCL_NVLS_ENABLE=0),
for the meshes `data` (data=N) and `fsdp` (fsdp=N). Efficiency is examples/s per device over
that of the smallest N run (the N=1 row is shared by both meshes and layouts). Arguments after
`--` go to every train_step.py run (e.g. -- --config.model.remat=full).

The checkpoint check (skip with --no_checkpoint) trains 2 steps with fsdp over the largest N as
N processes (muse_jax.train under launch/local.py), restores that checkpoint through the
Trainer in one process on every N of --gpus, and compares every leaf of the restored state bit
for bit; then the same from the smallest N.

Then a hard stop of every process: N processes (the largest N, fsdp) train --kill_steps steps
with a checkpoint every quarter of them; after the first checkpoint every process gets SIGKILL;
the same command, rerun, must resume from the newest checkpoint ("Resuming from step K") and
finish with a state bit-identical to that of an uninterrupted run of the same command.

--precompute adds sharded precompute, weak-scaled: benchmarks/precompute.py --full (T5-XXL, the
f16 VQ encoder at 256 px and the f8 one at 512 px, random bf16 weights; with --tiny its tiny
shapes models) over --precompute_per_device records and a batch of --precompute_batch per
device, as one process for N=1 and N processes of one device for N>1, timed once compiled.

On GPU it runs on the GPUs nvidia-smi lists; without --tiny and without GPUs it runs on CPU
fake devices. Logs of every run are kept in --out. Exit status: 0 when every run succeeded and
every restore matched; 1 otherwise; 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHES = {"data": ("-1", "1"), "fsdp": ("1", "-1")}  # (mesh.data, mesh.fsdp)


def gpu_count() -> int:
  try:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
  except (OSError, subprocess.TimeoutExpired):
    return 0
  if out.returncode:
    return 0
  return sum(line.startswith("GPU ") for line in out.stdout.splitlines())


def device_env(n: int, gpu: bool) -> dict:
  """Environment of one process that sees n devices."""
  env = dict(os.environ, PYTHONUNBUFFERED="1", NCCL_NVLS_ENABLE="0")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
  if gpu:
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(n))
  else:
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
  return env


def launch(n: int, gpu: bool) -> list[str]:
  """launch/local.py prefix: n processes of one device each."""
  per = "--gpus_per_process=1" if gpu else "--devices_per_process=1"
  return [sys.executable, os.path.join(ROOT, "launch/local.py"), f"--num_processes={n}", per,
          "--grace=10", "--"]


def run(cmd: list[str], env: dict, log: str) -> int:
  with open(log, "w") as f:
    rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
  if rc:
    with open(log) as f:
      tail = "".join(f.readlines()[-15:])
    print(f"-- failed (exit {rc}), log {log}:\n{tail}", file=sys.stderr, flush=True)
  return rc


def mesh_flags(mesh: str) -> list[str]:
  data, fsdp = MESHES[mesh]
  return [f"--config.mesh.data={data}", f"--config.mesh.fsdp={fsdp}"]


def step_row(args, gpu, layout, mesh, n) -> dict:
  tag = f"{layout}_{mesh}_{n}"
  out = os.path.join(args.out, f"step_{tag}.json")
  cmd = [os.path.join(ROOT, "benchmarks/train_step.py"), f"--config={args.config}",
         f"--config.train.batch_size={args.per_device_batch * n}", *mesh_flags(mesh),
         f"--steps={args.steps}", f"--warmup={args.warmup}", f"--result_json={out}",
         *args.extra]
  if layout == "procs":
    cmd, env = launch(n, gpu) + cmd, device_env(n, gpu)  # local.py splits the devices
  else:
    cmd, env = [sys.executable] + cmd, device_env(n, gpu)
  print(f"-- train step: {layout} {mesh} N={n}", flush=True)
  rc = run(cmd, env, os.path.join(args.out, f"step_{tag}.log"))
  row = dict(layout="1 proc" if layout == "proc" else f"{n} procs", mesh=mesh, n=n)
  if rc or not os.path.exists(out):
    return dict(row, failed=rc or 1)
  with open(out) as f:
    return dict(row, **json.load(f))


def precompute_row(args, gpu, n) -> dict:
  wd = os.path.join(args.out, f"precompute_{n}")
  shutil.rmtree(wd, ignore_errors=True)
  out = wd + ".json"
  cmd = [os.path.join(ROOT, "benchmarks/precompute.py"), "--precompute_only",
         f"--workdir={wd}", f"--num={args.precompute_per_device * n}",
         f"--batch={args.precompute_batch * n}", f"--result_json={out}"]
  cmd = (launch(n, gpu) if n > 1 else [sys.executable]) + cmd + ([] if args.tiny else ["--full"])
  print(f"-- precompute: {n} process(es)", flush=True)
  rc = run(cmd, device_env(n, gpu), wd + ".log")
  shutil.rmtree(wd, ignore_errors=True)  # at full size, about 1 MB of text features a record
  if rc or not os.path.exists(out):
    return dict(n=n, failed=rc or 1)
  with open(out) as f:
    return dict(n=n, **json.load(f))


def print_precompute(rows: list[dict]) -> None:
  base = next((r for r in rows if "failed" not in r), None)
  per0 = base["examples_per_s"] / base["n"] if base else None
  print("== precompute: weak, records and batch per device fixed; efficiency vs the first row")
  print("N  processes  examples/s  ex/s/device  efficiency")
  for r in rows:
    if "failed" in r:
      print(f"{r['n']:<3}failed (exit {r['failed']})")
      continue
    per = r["examples_per_s"] / r["n"]
    print(f"{r['n']:<3}{r['processes']:<11}{r['examples_per_s']:<12.1f}{per:<13.1f}"
          f"{100 * per / per0:.0f}%")


def print_table(rows: list[dict]) -> None:
  base = next((r for r in rows if "failed" not in r), None)
  per0 = base["examples_per_s"] / base["n"] if base else None
  head = ("layout", "mesh", "N", "step ms", "examples/s", "ex/s/device", "efficiency", "MFU",
          "peak GiB/dev")
  lines = [head]
  for r in rows:
    if "failed" in r:
      lines.append((r["layout"], r["mesh"], str(r["n"]), f"failed (exit {r['failed']})",
                    "", "", "", "", ""))
      continue
    per = r["examples_per_s"] / r["n"]
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a"
    lines.append((r["layout"], r["mesh"], str(r["n"]), f"{1e3 * r['step_s']:.1f}",
                  f"{r['examples_per_s']:.1f}", f"{per:.1f}",
                  f"{100 * per / per0:.0f}%" if per0 else "n/a", mfu,
                  f"{r['peak_bytes_per_device'] / 2**30:.1f}"
                  if r["peak_bytes_per_device"] else "n/a"))
  widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
  print("== scaling: weak, per-device batch fixed; efficiency vs the first row")
  for line in lines:
    print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())


def digest(workdir: str) -> None:
  """Worker: restore the newest checkpoint of `workdir` with the Trainer on every visible
  device (fsdp), print one JSON line: leaf path -> sha256 of its bytes."""
  import jax
  import numpy as np
  from muse_jax.training.loop import Trainer
  from muse_jax.workdir.saved_config import load_saved_config

  cfg = load_saved_config(workdir)
  cfg.mesh.data, cfg.mesh.fsdp = 1, -1
  cfg.train.eval_every = 0
  state, step = Trainer(cfg, workdir).initial_state()
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  out = {jax.tree_util.keystr(k): hashlib.sha256(np.ascontiguousarray(jax.device_get(v))
                                                 .tobytes()).hexdigest() for k, v in leaves}
  print("digest " + json.dumps(dict(step=step, devices=jax.device_count(), leaves=out)))


def restored_digest(workdir: str, n: int, gpu: bool, log: str) -> dict | None:
  """`digest` of `workdir`'s newest checkpoint, restored in a process that sees n devices;
  None if the restore failed."""
  rc = run([sys.executable, os.path.abspath(__file__), f"--digest={workdir}"],
           device_env(n, gpu), log)
  with open(log) as f:
    found = [line for line in f if line.startswith("digest ")]
  return None if rc or not found else json.loads(found[-1][len("digest "):])


def checkpoint_rows(args, gpu, ns) -> list[tuple[str, bool]]:
  results = []
  for save_n in sorted({max(ns), min(ns)}, reverse=True):
    wd = os.path.join(args.out, f"ckpt_saved_on_{save_n}")
    shutil.rmtree(wd, ignore_errors=True)
    train = ["-m", "muse_jax.train", f"--config={args.config}", f"--workdir={wd}",
             f"--config.train.batch_size={args.per_device_batch * save_n}", *mesh_flags("fsdp"),
             "--config.train.num_steps=2", "--config.checkpoint.every_steps=2",
             "--config.train.eval_every=0"]
    env = device_env(save_n, gpu)  # local.py splits the devices
    print(f"-- checkpoint: save with fsdp over {save_n} processes", flush=True)
    if run(launch(save_n, gpu) + train, env, wd + "_save.log"):
      results.append((f"save on {save_n}", False))
      continue
    digests = {}
    for n in ns:
      log = f"{wd}_restore_on_{n}.log"
      print(f"-- checkpoint: restore on {n}", flush=True)
      got = restored_digest(wd, n, gpu, log)
      if got is None:
        results.append((f"{save_n} -> {n}: restore failed", False))
        continue
      if got["step"] != 2:  # a fresh state would match itself: the checkpoint must be read
        results.append((f"{save_n} -> {n}: restored step {got['step']}, not 2", False))
        continue
      digests[n] = got["leaves"]
    ref = digests.get(save_n)
    for n, d in sorted(digests.items()):
      if n != save_n and ref is not None:
        same = d == ref
        results.append((f"saved on {save_n} (fsdp), restored on {n}: "
                        f"{len(d)} leaves {'bit-identical' if same else 'DIFFER'}", same))
  return results


def descendants(pid: int) -> list[int]:
  """Every process below `pid` (from /proc), children first."""
  children: dict[int, list[int]] = {}
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      with open(f"/proc/{name}/stat") as f:
        parent = int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
      continue
    children.setdefault(parent, []).append(int(name))
  out, todo = [], [pid]
  while todo:
    kids = children.get(todo.pop(0), [])
    out += kids
    todo += kids
  return out


def kill_resume_rows(args, gpu, n) -> list[tuple[str, bool]]:
  from muse_jax.workdir.checkpoints import latest_step
  steps, every = args.kill_steps, max(args.kill_steps // 4, 1)

  def train(wd):
    return launch(n, gpu) + [
        "-m", "muse_jax.train", f"--config={args.config}", f"--workdir={wd}",
        f"--config.train.batch_size={args.per_device_batch * n}", *mesh_flags("fsdp"),
        f"--config.train.num_steps={steps}", f"--config.checkpoint.every_steps={every}",
        "--config.train.eval_every=0"]
  ref, killed = (os.path.join(args.out, f"kill_{name}") for name in ("reference", "killed"))
  for wd in (ref, killed):
    shutil.rmtree(wd, ignore_errors=True)
  env = device_env(n, gpu)
  print(f"-- kill and resume: {n} processes, uninterrupted", flush=True)
  if run(train(ref), env, ref + ".log"):
    return [("kill and resume: the uninterrupted run failed", False)]
  print(f"-- kill and resume: {n} processes, SIGKILL after the first checkpoint", flush=True)
  with open(killed + "_1.log", "w") as f:
    proc = subprocess.Popen(train(killed), env=env, stdout=f, stderr=subprocess.STDOUT,
                            cwd=ROOT)
    deadline = time.time() + 3600  # a run that never checkpoints is killed all the same
    while proc.poll() is None and not latest_step(killed) and time.time() < deadline:
      time.sleep(0.2)
    for pid in [proc.pid] + descendants(proc.pid):
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    proc.wait()
  at_kill = latest_step(killed)
  if at_kill is None or at_kill >= steps:
    return [(f"kill and resume: no kill before the end (newest checkpoint {at_kill})", False)]
  if run(train(killed), env, killed + "_2.log"):
    return [("kill and resume: the resumed run failed", False)]
  with open(killed + "_2.log") as f:
    resumed = f"Resuming from step {at_kill}" in f.read()
  digests = [restored_digest(wd, n, gpu, wd + "_digest.log") for wd in (ref, killed)]
  same = None not in digests and digests[0] == digests[1] and digests[0]["step"] == steps
  return [(f"{n} processes killed (SIGKILL) after step {at_kill}, rerun: resumed from it", resumed),
          (f"resumed run at step {steps} against an uninterrupted one: "
           f"{'bit-identical' if same else 'DIFFER (or a digest failed)'}", same)]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/base_632m.py")
  p.add_argument("--per_device_batch", type=int, default=64)
  p.add_argument("--gpus", default="1,2,4", help="device counts (those above what exists are "
                 "dropped)")
  p.add_argument("--meshes", default="data,fsdp", help="data and/or fsdp")
  p.add_argument("--layouts", default="proc,procs",
                 help="proc: one process with N devices; procs: N processes of one; "
                 "empty: no step runs (the checkpoint check only)")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--no_checkpoint", action="store_true",
                 help="skip the checkpoint checks (sharded restore; kill and resume)")
  p.add_argument("--kill_steps", type=int, default=40,
                 help="steps of the kill-and-resume runs (a checkpoint every quarter)")
  p.add_argument("--precompute", action="store_true",
                 help="also time sharded precompute on each N (see above)")
  p.add_argument("--precompute_per_device", type=int, default=1024,
                 help="precompute records per device (--tiny: 32)")
  p.add_argument("--precompute_batch", type=int, default=64,
                 help="precompute batch per device (--tiny: 8)")
  p.add_argument("--tiny", action="store_true",
                 help="configs/tiny.py on CPU fake devices, 8 per device, 3 steps")
  p.add_argument("--out", default="", help="logs and results (default: a new temp dir)")
  p.add_argument("--digest", default="", help=argparse.SUPPRESS)  # checkpoint worker
  p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: train_step.py flags")
  args = p.parse_args(argv)
  if args.digest:
    digest(args.digest)
    return 0
  args.extra = [a for a in args.extra if a != "--"]
  if args.tiny:
    args.config, args.per_device_batch, args.steps, args.warmup = "configs/tiny.py", 8, 3, 1
    args.precompute_per_device, args.precompute_batch = 32, 8
  meshes = args.meshes.split(",")
  layouts = [x for x in args.layouts.split(",") if x]
  try:
    ns = sorted({int(n) for n in args.gpus.split(",")})
  except ValueError:
    p.error(f"--gpus={args.gpus}: give device counts like 1,2,4")
  if not set(meshes) <= set(MESHES) or not set(layouts) <= {"proc", "procs"} or min(ns) < 1:
    p.error("--meshes takes data,fsdp; --layouts takes proc,procs; --gpus counts >= 1")
  gpus = 0 if args.tiny else gpu_count()
  gpu = gpus > 0
  if gpu:
    ns = [n for n in ns if n <= gpus] or p.error(f"no count in --gpus fits the {gpus} GPUs")
  args.config = os.path.abspath(args.config)
  args.out = os.path.abspath(args.out or tempfile.mkdtemp(prefix="scaling_"))
  os.makedirs(args.out, exist_ok=True)
  print(f"scaling: {'GPU' if gpu else 'CPU fake devices'}, N in {ns}, logs in {args.out}",
        flush=True)
  t0 = time.time()
  rows = []
  for n in ns:
    for layout in layouts if n > 1 else ["proc"][:len(layouts)]:
      for mesh in meshes if n > 1 else [meshes[0]]:
        rows.append(step_row(args, gpu, layout, mesh, n))
  pre = [precompute_row(args, gpu, n) for n in ns] if args.precompute else []
  checks = [] if args.no_checkpoint else (checkpoint_rows(args, gpu, ns)
                                          + kill_resume_rows(args, gpu, max(ns)))
  if rows:
    print_table(rows)
  if pre:
    print_precompute(pre)
  if checks:
    print("== checkpoints")
    for text, ok in checks:
      print(f"{'ok  ' if ok else 'FAIL'}  {text}")
  print(f"({time.time() - t0:.0f} s)")
  failed = any("failed" in r for r in rows + pre) or not all(ok for _, ok in checks)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
