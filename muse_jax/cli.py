"""What every entry point shares: user-facing errors become one line and a documented status.

Exit status: 2 bad config, mesh or missing input; 3 non-finite loss (the last good checkpoint
is kept); 143 stopped by SIGTERM/preemption after saving a checkpoint (rerun to resume).
"""
from __future__ import annotations

import sys
from typing import Callable

from muse_jax.configs.checks import ConfigError
from muse_jax.parallel.mesh import MeshError
from muse_jax.training.loop import NonFiniteLoss, Preempted


def run_or_exit(fn: Callable[[], object], user_errors: tuple[type[BaseException], ...] = ()):
  """Runs `fn`; maps the project's stop conditions to a message on stderr and an exit status."""
  try:
    return fn()
  except (ConfigError, MeshError, *user_errors) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except NonFiniteLoss as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  except Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(143)
