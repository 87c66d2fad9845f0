"""XLA_FLAGS for every test process: the in-process tests (tests/conftest.py) and the CLI
subprocesses they start. Both use the same flags, so a subprocess computes the same bits as
the run it is checked against."""

# LLVM's optimisation passes off: the test programs are tiny and run for milliseconds, so the
# suite's time goes to compiling them, and these passes are most of a CPU compile.
OPTIMIZATION = "--xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a test process with `devices` fake CPU devices."""
  return f"--xla_force_host_platform_device_count={devices} {OPTIMIZATION}"
