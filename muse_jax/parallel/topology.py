"""TPU targets for ahead-of-time compilation: names -> topology descriptions -> devices.

A target is named as Cloud TPU names an accelerator type (`v5p-256`, `v4-512`, `v5litepod-16`,
`v6e-64`) or as libtpu names a topology (`v5p:4x4x8`, `v5e:2x2`). The number in an accelerator
type counts TensorCores on v4 and v5p (two per chip, one JAX device per chip in megacore mode),
and chips on v5e and v6e: `v5p-256` is 128 chips (4x4x8), `v5litepod-16` is 16 chips (4x4).

`compile_only_devices` needs libtpu (`pip install -e ".[tpu]"`), which describes any TPU
topology on a host without TPUs; the devices it returns compile programs but cannot run them.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

GiB = 1 << 30


class TopologyError(ValueError):
  """An unknown or malformed target, or no libtpu to describe it."""


@dataclasses.dataclass(frozen=True)
class Generation:
  name: str             # as in topology names: v4, v5e, v5p, v6e
  aliases: tuple        # accelerator-type prefixes
  dims: int             # 3-D torus (v4, v5p) or 2-D (v5e, v6e)
  cores_per_chip: int   # TensorCores counted per chip in accelerator-type names
  hbm_bytes: int        # HBM per chip (Cloud TPU system architecture pages)


GENERATIONS = (
    Generation("v4", ("v4",), 3, 2, 32 * GiB),
    Generation("v5p", ("v5p",), 3, 2, 95 * GiB),
    Generation("v5e", ("v5e", "v5litepod"), 2, 1, 16 * GiB),
    Generation("v6e", ("v6e",), 2, 1, 32 * GiB),
)

# Chips -> the slice shape Cloud TPU provisions for them.
SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
             256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16",
             6144: "16x16x24"}
SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
             256: "16x16"}


@dataclasses.dataclass(frozen=True)
class Target:
  generation: Generation
  shape: str        # e.g. "4x4x8"
  num_slices: int = 1

  @property
  def topology_name(self) -> str:
    return f"{self.generation.name}:{self.shape}"

  @property
  def chips_per_slice(self) -> int:
    return math.prod(int(d) for d in self.shape.split("x"))

  @property
  def chips(self) -> int:
    return self.chips_per_slice * self.num_slices

  def describe(self) -> str:
    g = self.generation
    name = f"{g.name}-{self.chips_per_slice * g.cores_per_chip}"
    slices = f" x {self.num_slices} slices" if self.num_slices > 1 else ""
    return (f"{name} ({self.topology_name}, {self.chips} chips{slices}, "
            f"{g.hbm_bytes / GiB:g} GiB HBM per chip)")


def _generation(prefix: str) -> Generation:
  for g in GENERATIONS:
    if prefix in g.aliases:
      return g
  names = ", ".join(a for g in GENERATIONS for a in g.aliases)
  raise TopologyError(f"unknown TPU generation {prefix!r}; choose one of {names}")


def parse_target(name: str, num_slices: int = 1) -> Target:
  """`v5p-256` (accelerator type) or `v5p:4x4x8` (topology) -> Target."""
  name = name.strip().lower()
  m = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+){1,2})", name)
  if m:
    g = _generation(m.group(1))
    if m.group(2).count("x") + 1 != g.dims:
      raise TopologyError(f"topology {name!r}: {g.name} slices have {g.dims} dimensions, "
                          f"e.g. {g.name}:{(SHAPES_3D if g.dims == 3 else SHAPES_2D)[4]}")
    return Target(g, m.group(2), num_slices)
  m = re.fullmatch(r"([a-z0-9]+)-(\d+)", name)
  if not m:
    raise TopologyError(f"--topology={name!r}: name an accelerator type (v5p-256, v4-512, "
                        "v5litepod-16, v6e-64) or a topology (v5p:4x4x8, v5e:2x2)")
  g = _generation(m.group(1))
  count = int(m.group(2))
  chips, rem = divmod(count, g.cores_per_chip)
  shapes = SHAPES_3D if g.dims == 3 else SHAPES_2D
  if rem or chips not in shapes:
    unit = "TensorCores (2 per chip)" if g.cores_per_chip == 2 else "chips"
    sizes = ", ".join(f"{g.aliases[-1]}-{c * g.cores_per_chip}" for c in shapes)
    raise TopologyError(f"{name}: the number counts {unit}; known slices are {sizes}, or give "
                        f"a topology such as {g.name}:{shapes[4]}")
  return Target(g, shapes[chips], num_slices)


def _quiet_libtpu_env() -> None:
  """libtpu, loaded on a host without TPUs, warns that it cannot find the accelerator type and
  worker hostnames, and takes /tmp/libtpu_lockfile, which any other process that loaded it
  (every JAX process once libtpu is installed, unless JAX_PLATFORMS excludes tpu) may hold.
  None of these matter for compiling, so they are set only where unset: on a TPU VM the real
  values stay."""
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def libtpu_missing() -> str | None:
  """Why TPU topologies cannot be described here (None when libtpu is installed)."""
  from jax._src import xla_bridge
  if xla_bridge.get_tpu_library_path() is None:
    return ("libtpu is not installed, so TPU topologies cannot be described on this host; "
            'install it with `pip install -e ".[tpu]"` (jax[tpu] of the pinned jax version)')
  return None


def compile_only_devices(target: Target) -> list:
  """The target's devices (compile-only: programs compile for them but do not run)."""
  why = libtpu_missing()
  if why:
    raise TopologyError(why)
  _quiet_libtpu_env()
  from jax.experimental import topologies
  kwargs = dict(chip_config_name="megacore") if target.generation.cores_per_chip == 2 else {}
  if target.num_slices > 1:
    kwargs["num_slices"] = target.num_slices
  try:
    topo = topologies.get_topology_desc(topology_name=target.topology_name, platform="tpu",
                                        **kwargs)
  except Exception as e:  # libtpu reports a bad topology as a runtime error
    raise TopologyError(f"libtpu cannot describe {target.topology_name}: "
                        f"{str(e).splitlines()[0]}") from None
  return list(topo.devices)
