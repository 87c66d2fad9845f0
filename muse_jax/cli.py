"""What every entry point shares: user-facing errors become one line and a documented status.

Exit status:
  0    done
  2    bad flag or config (muse_jax/configs/cli_flags.py parses the flags), mesh, missing or
       malformed input (a data path or manifest, a weights file, e.g. a safetensors header
       that is too large), a config that does not match the checkpoint it resumes, an
       unwritable workdir, or no checkpoint in the workdir that can be restored
  3    non-finite loss or state (the last good checkpoint is kept and named)
  5    a write into the workdir failed during the run (disk full, permission denied): the
       newest checkpoint written before it is kept; fix the disk, rerun to resume
  6    out of accelerator memory (XLA's RESOURCE_EXHAUSTED, when compiling or running): the
       newest checkpoint is kept; the message says what to lower or shard
  130  stopped by Ctrl-C (SIGINT); after saving a checkpoint when the loop was running
  134  multi-process: another process died and JAX's heartbeat ended this one (SIGABRT);
       rerun to resume from the newest checkpoint
  143  stopped by SIGTERM/preemption after saving a checkpoint (rerun to resume); in a
       multi-process run, a notice to any process stops all of them at one step
"""
from __future__ import annotations

import logging
import sys
from typing import Callable

import jax

from muse_jax.configs.checks import ConfigError
from muse_jax.parallel.mesh import MeshError
from muse_jax.training.stops import (OUT_OF_MEMORY_ADVICE, NonFiniteLoss, Preempted,
                                     out_of_memory_line)
from muse_jax.weights.safetensors_io import WeightsError
from muse_jax.workdir.access import UnwritableWorkdir, WorkdirWriteError
from muse_jax.workdir.checkpointer import NoIntactCheckpoint

EXIT_USER_ERROR = 2
EXIT_NON_FINITE = 3
EXIT_WRITE_FAILED = 5
EXIT_OUT_OF_MEMORY = 6
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C

GPU_MEMORY_NOTE = ("on GPUs JAX takes 75% of the memory unless XLA_PYTHON_CLIENT_MEM_FRACTION "
                   "says more (e.g. 0.95)")


class _DropOrbaxErrorLogs(logging.Filter):
  """Orbax logs a traceback for each of its threads when a save fails, and asyncio logs each
  of its save tasks that ended with the error when their event loop shuts down; the failure
  reaches the loop as one WorkdirWriteError, reported in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR:
      return True
    return "/orbax/" not in record.pathname and "/orbax/" not in record.getMessage()


def run_or_exit(fn: Callable[[], object], user_errors: tuple[type[BaseException], ...] = ()):
  """Runs `fn`; maps the project's stop conditions to a message on stderr and an exit status."""
  for name in ("absl", "asyncio"):
    logging.getLogger(name).addFilter(_DropOrbaxErrorLogs())
  try:
    return fn()
  except (ConfigError, MeshError, WeightsError, UnwritableWorkdir, NoIntactCheckpoint,
          *user_errors) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
  except NonFiniteLoss as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_NON_FINITE)
  except WorkdirWriteError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_WRITE_FAILED)
  except jax.errors.JaxRuntimeError as e:
    first = out_of_memory_line(str(e))
    if first is None:
      raise
    print(f"error: out of accelerator memory ({first}); {OUT_OF_MEMORY_ADVICE}; "
          f"{GPU_MEMORY_NOTE}", file=sys.stderr)
    sys.exit(EXIT_OUT_OF_MEMORY)
  except Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(e.exit_status)
  except KeyboardInterrupt:
    print("interrupted (Ctrl-C) before a checkpoint of the current step was written; rerun "
          "the same command to resume from the newest checkpoint", file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)
