"""Device-kernel events of a `jax.profiler` trace, and kernel names sorted into categories.

Used by benchmarks/profile_step.py (train step) and benchmarks/sample.py --profile (sampler).
"""
import glob
import gzip
import json
import os

CATEGORIES = (
    ("attention", ("flash", "fmha", "cudnn", "sdpa", "attention")),
    ("matmul", ("gemm", "cutlass", "sm90_xmma", "xmma", "cublas", "matmul", "dot", "nvjet")),
    ("collective", ("nccl", "all-reduce", "all-gather", "reduce-scatter")),
    ("copy/transpose", ("copy", "transpose", "memcpy", "memset")),
    ("fusion/elementwise", ("fusion", "loop_", "input_", "reduce", "convert", "broadcast")),
)


def category(name: str) -> str:
  low = name.lower()
  for cat, keys in CATEGORIES:
    if any(k in low for k in keys):
      return cat
  return "other"


def device_events(trace_dir: str):
  paths = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  paths += glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
  if not paths:
    raise SystemExit(f"no trace json found under {trace_dir}")
  with gzip.open(sorted(paths)[-1]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  pids = {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      pids[e["pid"]] = e.get("args", {}).get("name", "")
  gpu_pids = {p for p, n in pids.items() if "/device:GPU" in n or "gpu" in n.lower()}
  for e in events:
    if e.get("ph") == "X" and e.get("pid") in gpu_pids and "dur" in e:
      yield e["name"], float(e["dur"])
