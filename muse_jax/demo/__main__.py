"""`python -m muse_jax.demo --config=configs/demo_cpu.py --workdir=demo_out`: the command line.

The usage text (`--help`) is the package's documentation (muse_jax/demo/__init__.py).
"""
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

import muse_jax.demo as _demo
from muse_jax.configs.cli_flags import parse_flags

__doc__ = _demo.__doc__  # absl prints the main module's docstring for --help


def define_flags():
  config_flags.DEFINE_config_file("config", None, "Path to a demo config: configs/demo_cpu.py "
                                  "(2 CPU cores, <= 15 min) or configs/demo_gpu.py (one H200).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Output directory (PNGs, metrics.json, stage workdirs); "
                      "rerun with the same one to resume.")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
    sys.exit(2)
  FLAGS = flags.FLAGS
  logging.getLogger("absl").setLevel(logging.WARNING)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  from muse_jax.cli import run_or_exit
  from muse_jax.workdir.checkpoints import MissingCheckpoint
  run_or_exit(lambda: _demo.Demo(FLAGS.config, FLAGS.workdir, argv=sys.argv).run(),
              user_errors=(MissingCheckpoint,))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
