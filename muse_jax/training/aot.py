"""Ahead-of-time compilation of a run's train step for a TPU topology, on any host.

`compile_for(config, target)` builds the mesh of `config.mesh` on the target's compile-only
devices (muse_jax.parallel.topology), lowers the train step that `muse_jax.train` would run
there (the same `StepFunctions`: stage, state and batch shardings, jit, donation) and compiles
it with libtpu. `report` then reads per-chip memory from the executable's memory analysis, the
collectives from its optimized HLO (muse_jax.parallel.collectives) and FLOPs from its cost
analysis. A program that does not fit in a chip's HBM either fails to compile (XLA's
RESOURCE_EXHAUSTED) or reports more memory than the chip has; both raise `DoesNotFit`.
"""
from __future__ import annotations

import dataclasses
import re
import time

import jax

from muse_jax.configs.checks import ConfigError
from muse_jax.parallel.collectives import KINDS, KindStats, collective_stats
from muse_jax.parallel.mesh import make_mesh
from muse_jax.parallel.topology import GiB, Target, compile_only_devices
from muse_jax.training.flops import peak_flops_per_device
from muse_jax.training.loop import check_batch
from muse_jax.training.registry import validate
from muse_jax.training.steps import StepFunctions
from muse_jax.training.stops import OUT_OF_MEMORY_ADVICE, out_of_memory_line


class DoesNotFit(ValueError):
  """The step needs more HBM per chip than the target has."""


@dataclasses.dataclass
class Report:
  target: Target
  mesh: dict
  batch_per_chip: float
  compile_seconds: float
  memory: dict            # bytes per chip: arguments, outputs, aliased, temporaries, code, total
  collectives: dict       # kind -> KindStats (per chip, per step)
  xla_flops: float        # cost analysis, per chip (a while loop's body counted once)
  model_flops: float      # analytic, per chip and step (0 when the stage has none)
  peak_flops: float       # per chip

  @property
  def fits(self) -> bool:
    return self.memory["total"] <= self.target.generation.hbm_bytes

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["target"] = self.target.describe()
    d["collectives"] = {k: dataclasses.asdict(v) for k, v in self.collectives.items()}
    return d


def memory_per_chip(compiled) -> dict:
  m = compiled.memory_analysis()
  mem = dict(arguments=m.argument_size_in_bytes, outputs=m.output_size_in_bytes,
             aliased=m.alias_size_in_bytes, temporaries=m.temp_size_in_bytes,
             generated_code=m.generated_code_size_in_bytes)
  # Donated state buffers are both arguments and outputs: count them once.
  mem["total"] = (mem["arguments"] + mem["outputs"] - mem["aliased"] + mem["temporaries"]
                  + mem["generated_code"])
  return mem


# XLA:TPU's two spellings of an out-of-memory compile.
_NEEDS = re.compile(r"required for (.+?) \(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)")
_USED = re.compile(r"Used ([\d.]+)G of ([\d.]+)G hbm")


def _oom_message(err: str, target: Target) -> str:
  m = _NEEDS.search(err)
  what, need, have = (m.group(1), m.group(2), m.group(3)) if m else ("the step", None, None)
  m = None if need else _USED.search(err)
  if m:
    need, have = m.group(1), m.group(2)
  if need:
    short = float(need) - float(have)
    return (f"needs {need} GiB per chip for {what}, {target.generation.name} has {have} GiB "
            f"usable: short by {short:.2f} GiB")
  return out_of_memory_line(err) or err.splitlines()[0].strip()


ADVICE = f"{OUT_OF_MEMORY_ADVICE}, or pick a larger topology"


def compile_for(config, target: Target):
  """(StepFunctions, compiled train step, compile seconds) of `config` on `target`."""
  validate(config)
  if config.model.get("attention") == "cudnn":
    raise ConfigError("model.attention='cudnn' runs only on NVIDIA GPUs; use auto (XLA on "
                      "TPUs) or xla for a TPU target")
  devices = compile_only_devices(target)
  mesh = make_mesh(config.mesh, devices, whole_slice=True)
  check_batch(config, mesh)
  steps = StepFunctions(config, mesh)
  start = time.perf_counter()
  try:
    compiled = steps.compile()
  except jax.errors.JaxRuntimeError as e:
    if out_of_memory_line(str(e)) is None:
      raise
    raise DoesNotFit(f"the train step does not fit {target.describe()}: "
                     f"{_oom_message(str(e), target)}; {ADVICE}") from None
  return steps, compiled, time.perf_counter() - start


def report(steps: StepFunctions, compiled, target: Target, seconds: float) -> Report:
  n = len(steps.mesh.devices.flat)
  b = int(steps.config.train.batch_size)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return Report(
      target=target, mesh=dict(steps.mesh.shape), batch_per_chip=b / n,
      compile_seconds=seconds, memory=memory_per_chip(compiled),
      collectives=collective_stats(compiled.as_text()),
      xla_flops=float(cost.get("flops", 0.0)),
      model_flops=steps.stage.flops_per_example() * b / n,
      peak_flops=peak_flops_per_device(steps.mesh.devices.flat[0]))


def check_fits(rep: Report) -> None:
  if not rep.fits:
    hbm, total = rep.target.generation.hbm_bytes, rep.memory["total"]
    raise DoesNotFit(f"the train step does not fit {rep.target.describe()}: needs "
                     f"{total / GiB:.2f} GiB per chip, short by {(total - hbm) / GiB:.2f} GiB; "
                     f"{ADVICE}")


def _size(x: float) -> str:
  for unit, scale in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
    if x >= scale:
      return f"{x / scale:.2f} {unit}"
  return f"{x:.0f} B"


def format_report(rep: Report, config) -> list[str]:
  m, hbm = rep.memory, rep.target.generation.hbm_bytes
  model = config.model
  scanned = bool(model.get("scan_layers", False)) or int(config.train.grad_accum) > 1
  how = ""
  if "scan_layers" in model:
    how = (f"remat {model.remat}; layers {'scanned' if model.scan_layers else 'unrolled'}; ")
  lines = [
      f"target: {rep.target.describe()}",
      f"stage {config.stage}; mesh " + " ".join(f"{k}={v}" for k, v in rep.mesh.items())
      + f"; batch {int(config.train.batch_size)} ({rep.batch_per_chip:g} per chip); {how}"
      f"compiled in {rep.compile_seconds:.1f} s",
      "memory per chip: " + ", ".join(f"{k.replace('_', ' ')} {_size(m[k])}" for k in
                                      ("arguments", "outputs", "aliased", "temporaries",
                                       "generated_code")),
      f"  total {_size(m['total'])} of {_size(hbm)} HBM ({100 * m['total'] / hbm:.1f}%)",
      "collectives per step, per chip (buffer: the whole array; traffic: what a ring sends):",
      f"  {'kind':<20}{'count':>8}{'buffer':>14}{'traffic':>14}",
  ]
  for kind in KINDS:
    s: KindStats = rep.collectives[kind]
    lines.append(f"  {kind:<20}{s.count:>8}{_size(s.buffer_bytes):>14}"
                 f"{_size(s.traffic_bytes):>14}")
  note = "; it counts a loop body once: scanned layers and microbatches once" if scanned else ""
  lines.append(f"FLOPs per step, per chip: {rep.xla_flops:.4g} (XLA cost analysis{note})")
  if rep.model_flops:
    at = ""
    if rep.peak_flops:
      at = f"; {rep.model_flops / rep.peak_flops * 1e3:.3g} ms per step at peak"
    lines.append(f"  model FLOPs per step, per chip: {rep.model_flops:.4g} (analytic{at})")
  return lines
