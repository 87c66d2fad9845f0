"""Device-kernel events of a `jax.profiler` trace, and kernel names sorted into categories.

Used by benchmarks/profile_step.py (train step) and benchmarks/sample.py --profile (sampler).
"""
import collections
import glob
import gzip
import json
import math
import os
import re

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


def kernel_times(trace_dir: str, calls: int):
  """The device kernels of `calls` identical profiled calls: microseconds per call by category
  and by kernel name, and each kernel's launches over all the calls."""
  by_cat, by_name, launches = (collections.Counter(), collections.Counter(),
                               collections.Counter())
  for name, dur in device_events(trace_dir):
    by_cat[category(name)] += dur / calls
    by_name[name] += dur / calls
    launches[name] += 1
  return by_cat, by_name, launches


_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\(.*?\)|\S+) ([\w\-]+)\(")


_ARRAY = re.compile(r"([a-z]+\d*[a-z\d]*)\[([\d,]*)\]")


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape string, e.g. `bf16[64,256]{1,0}` or a tuple `(f32[8], pred[])`."""
  total = 0
  for dtype, dims in _ARRAY.findall(re.sub(r"\{[^}]*\}", "", shape)):
    width = re.search(r"\d+", dtype)  # pred is a byte; token has none
    bits = 8 if dtype == "pred" else int(width.group()) if width else 0
    total += math.prod(int(d) for d in dims.split(",") if d) * -(-bits // 8)
  return total


def fusion_summaries(hlo_text: str, kernel_names) -> dict:
  """{kernel name: ("out SHAPE <- ops", bytes)} for the fusions among `kernel_names`, read from
  an optimized HLO module (`compiled.as_text()`): what each elementwise kernel computes, e.g.
  `bf16[8,4096,2816] <- multiply x6, add x2, tanh, convert x2`, and the bytes of its operands
  (its fused computation's parameters) and outputs: what one call reads and writes if it reads
  each operand once and whole (an operand it slices counts whole). A kernel is matched to the
  instruction of the same name, with a trailing `_N` also read as `.N` (HLO's numbering)."""
  bodies, params, current = {}, {}, None
  fusions = {}
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line)
    if m:
      current = m.group(1)
      bodies[current], params[current] = [], 0
      continue
    m = _INSTRUCTION.match(line)
    if m is None:
      continue
    name, shape, op = m.groups()
    if current is not None:
      bodies[current].append(op)
      if op == "parameter":
        params[current] += shape_bytes(shape)
    if op == "fusion":
      called = re.search(r"calls=%?([\w.\-]+)", line)
      fusions[name] = (shape, called.group(1) if called else None)
  out = {}
  for kernel in kernel_names:
    hit = fusions.get(kernel) or fusions.get(re.sub(r"_(\d+)$", r".\1", kernel))
    if hit is None:
      continue
    shape, called = hit
    ops = collections.Counter(o for o in bodies.get(called, ())
                              if o not in ("parameter", "constant", "bitcast", "tuple"))
    listed = ", ".join(f"{o} x{n}" if n > 1 else o for o, n in ops.most_common())
    out[kernel] = (f"{re.sub(r'\{[^}]*\}', '', shape)} <- {listed}",
                   params.get(called, 0) + shape_bytes(shape))
  return out


def fusion_lines(described, by_name, launches, calls: int) -> list:
  """Lines for the fusions of `fusion_summaries` (`described`) over `calls` profiled calls:
  microseconds per call (`by_name`), launches per call, bytes read and written per launch and
  the rate that makes, then their sum."""
  lines = [f"== the {len(described)} largest fusions: ms per step, calls, bytes read and "
           "written per call and the rate that is; output <- ops (optimized HLO)"]
  moved = 0.0
  for name, (text, nbytes) in described.items():
    n = launches[name] // calls
    moved += nbytes * n
    lines.append(f"  {by_name[name] / 1e3:8.3f} ms {n:4d}x {nbytes / 1e6:8.1f} MB "
                 f"{nbytes * n / by_name[name] / 1e6:5.2f} TB/s  {name}: {text[:200]}")
  spent = sum(by_name[n] for n in described)
  lines.append(f"  together {spent / 1e3:.2f} ms, {moved / 1e9:.2f} GB: "
               f"{moved / spent / 1e6:.2f} TB/s")
  return lines


def floor_lines(by_cat, flops: float, attention_flops: float, peak: float,
                goal_mfu: float = 0.0, step_s: float = None, devices: int = 1) -> list:
  """What a step's kernel times (`by_cat`, microseconds per step by category) leave for MFU.

  The model FLOPs of a step split into attention's score and value products (`attention_flops`,
  the flash kernels' work) and the other matmuls. From the kernel times the achieved rate of
  each, the MFU of the kernels' total time, and the MFU if every other kernel (elementwise,
  copies, ...) took no time: the step's floor at these attention and matmul rates. With a
  `goal_mfu` (percent), the time the other kernels may take for the step to reach it. With the
  step's wall time `step_s`, how much longer it is than its kernels (launch gaps, the host).
  `by_cat` sums the kernels of `devices` devices that share the step's `flops` evenly: every
  figure is per device."""
  flops, attention_flops = flops / devices, attention_flops / devices
  attn_s = by_cat.get("attention", 0.0) / 1e6 / devices
  mm_s = by_cat.get("matmul", 0.0) / 1e6 / devices
  total_s = sum(by_cat.values()) / 1e6 / devices
  rest_s = total_s - attn_s - mm_s
  mm_flops = flops - attention_flops

  def rate(f, s):
    return f"{f / s / 1e12:.0f} TFLOP/s" if s > 0 else "n/a"

  lines = [
      f"== floor: {flops / 1e12:.2f} TFLOP of model FLOPs per step and device, "
      f"{attention_flops / 1e12:.2f} in attention's score and value products",
      f"  attention kernels {attn_s * 1e3:8.2f} ms  {rate(attention_flops, attn_s)}",
      f"  matmul kernels    {mm_s * 1e3:8.2f} ms  {rate(mm_flops, mm_s)}",
      f"  other kernels     {rest_s * 1e3:8.2f} ms",
      f"  MFU of the kernel time {100 * flops / total_s / peak:.1f}%; with no other kernel "
      f"time {100 * flops / (attn_s + mm_s) / peak:.1f}% (the floor at these rates)"]
  if step_s:
    lines.append(f"  the step's wall time {step_s * 1e3:.1f} ms: "
                 f"{(step_s - total_s) * 1e3:.1f} ms beyond its kernels' time")
  if goal_mfu > 0:
    goal_s = flops / (goal_mfu / 100 * peak)
    lines.append(f"  {goal_mfu:g}% MFU is a {goal_s * 1e3:.1f} ms step: the other kernels "
                 f"within {(goal_s - attn_s - mm_s) * 1e3:.1f} ms (now {rest_s * 1e3:.1f} ms)")
  return lines
