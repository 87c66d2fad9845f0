"""Collectives of an optimized (post-SPMD) HLO module: how many run per step, and their bytes.

Counts come from the text of `compiled.as_text()`. A collective inside a while loop (scanned
layers, gradient accumulation) runs once per iteration: its computation's multiplicity is the
product of the trip counts of the loops around it, read from each loop's
`known_trip_count` or, failing that, from its condition (`i < N` against a constant). TPU
programs show an asynchronous collective in both its start and its done computation under
one channel id, so instructions are counted once per channel id, and run a reduce-scatter as
an `all-reduce-scatter` fusion (an all-reduce whose result each chip slices): an all-reduce
in such a computation counts as a reduce-scatter.

Bytes, per chip and per execution:
- `buffer`: the whole array the collective produces or reduces (an all-gather's output, a
  reduce-scatter's input, an all-reduce's operand);
- `traffic`: what a bandwidth-optimal ring sends per chip: (n-1)/n of the buffer for
  all-gather, reduce-scatter and all-to-all, 2(n-1)/n for all-reduce, the buffer for a
  collective-permute (n: the replica group size).
"""
from __future__ import annotations

import dataclasses
import math
import re

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2,
               "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
               "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\]")
_COMP = re.compile(r"^(?:ENTRY )?%([\w.\-]+) \(")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) (" + "|".join(KINDS) +
                    r")(-start)?\(")
_CALLS = re.compile(r"\b(calls|to_apply|body|condition)=%([\w.\-]+)")
_BRANCHES = re.compile(r"\b(?:branch_computations|called_computations)=\{([^}]*)\}")
_CHANNEL = re.compile(r"\bchannel_id=(\d+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


@dataclasses.dataclass
class KindStats:
  count: int = 0          # executions per step
  buffer_bytes: float = 0.0
  traffic_bytes: float = 0.0


def _array_bytes(shape_text: str) -> tuple[float, list[float]]:
  sizes = []
  for dtype, dims in _ARRAY.findall(shape_text):
    if dtype.startswith("f8"):
      width = 1
    elif dtype in DTYPE_BYTES:
      width = DTYPE_BYTES[dtype]
    else:
      continue
    sizes.append(width * math.prod(int(d) for d in dims.split(",") if d))
  return sum(sizes), sizes


def group_size(line: str) -> int | None:
  """Devices per replica group, from any of the three HLO spellings of `replica_groups`."""
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
  if m:
    sizes = dict((k.strip("'"), int(v)) for k, v in
                 (kv.split("=") for kv in m.group(1).split(",")))
    return math.prod(sizes[a.strip().strip("'")] for a in m.group(2).split(",") if a.strip())
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)
  if m:
    return int(m.group(2))
  m = re.search(r"replica_groups=\{\{([^}]*)\}", line)
  if m:
    return len(m.group(1).split(","))
  if "source_target_pairs" in line:
    return 2
  return None


def _trip_count(while_line: str, comps: dict[str, list[str]], cond: str) -> int:
  m = _TRIP.search(while_line)
  if m:
    return int(m.group(1))
  consts = {}
  for line in comps.get(cond, ()):
    c = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = s\d+\[\][^ ]* constant\((-?\d+)\)", line)
    if c:
      consts[c.group(1)] = int(c.group(2))
  for line in comps.get(cond, ()):
    if " compare(" in line and "direction=LT" in line:
      ops = re.search(r"compare\(([^)]*)\)", line).group(1)
      for name in re.findall(r"%([\w.\-]+)", ops):
        if name in consts:
          return max(consts[name], 1)
  return 1  # unknown: counted once


def _split(hlo: str) -> tuple[dict[str, list[str]], str]:
  comps: dict[str, list[str]] = {}
  entry, current = "", None
  for line in hlo.splitlines():
    m = _COMP.match(line)
    if m:
      current = m.group(1)
      comps[current] = []
      if line.startswith("ENTRY"):
        entry = current
    elif current is not None:
      comps[current].append(line)
  return comps, entry


def _multiplicities(comps: dict[str, list[str]], entry: str) -> dict[str, int]:
  edges: dict[str, list[tuple[str, int]]] = {}
  for name, lines in comps.items():
    out = []
    for line in lines:
      calls = dict(_CALLS.findall(line))
      if " while(" in line and "body" in calls:
        trips = _trip_count(line, comps, calls.get("condition", ""))
        out.append((calls["body"], trips))
        continue
      out.extend((callee, 1) for _, callee in _CALLS.findall(line))
      for group in _BRANCHES.findall(line):
        out.extend((c.strip().lstrip("%"), 1) for c in group.split(",") if c.strip())
    edges[name] = out
  mult: dict[str, int] = {}

  def visit(name, factor):  # called computations form a DAG
    mult[name] = mult.get(name, 0) + factor
    for callee, k in edges.get(name, ()):
      if callee in comps:
        visit(callee, factor * k)
  visit(entry, 1)
  return mult


def collective_stats(hlo: str) -> dict[str, KindStats]:
  """Per collective kind: executions per step and bytes per chip (see the module doc)."""
  comps, entry = _split(hlo)
  mult = _multiplicities(comps, entry)
  seen: dict[tuple[str, str], tuple[int, float, float]] = {}
  for name, lines in comps.items():
    times = mult.get(name, 0)
    if not times:
      continue
    for i, line in enumerate(lines):
      m = _INSTR.match(line)
      if not m:
        continue
      kind, is_start = m.group(3), bool(m.group(4))
      total, sizes = _array_bytes(m.group(2))
      result = max(sizes, default=0.0) if is_start else total
      n = group_size(line) or 1
      buffer = result * n if kind == "reduce-scatter" else result
      if kind == "all-reduce" and name.startswith("all-reduce-scatter"):
        kind = "reduce-scatter"  # the fusion's all-reduce result is the whole buffer
      frac = (n - 1) / n if n > 1 else 0.0
      traffic = {"all-reduce": 2 * frac * buffer,
                 "collective-permute": buffer}.get(kind, frac * buffer)
      ch = _CHANNEL.search(line)
      key = (kind, ch.group(1) if ch else f"{name}:{i}")
      prev = seen.get(key)
      if prev is None or times > prev[0]:
        seen[key] = (times, buffer, traffic)
  stats = {k: KindStats() for k in KINDS}
  for (kind, _), (times, buffer, traffic) in seen.items():
    s = stats[kind]
    s.count += times
    s.buffer_bytes += times * buffer
    s.traffic_bytes += times * traffic
  return stats
