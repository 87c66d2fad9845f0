r"""Compile a config's train step for a TPU topology, on a host without TPUs: memory and
collectives per chip before a reservation is spent.

  python -m muse_jax.compile --config=configs/base_3b.py --topology=v5p-256 \
      [--config.mesh.fsdp=-1 --config.mesh.data=1 ...] [--json=report.json]

--topology names a Cloud TPU accelerator type (v5p-256, v4-512, v5litepod-16, v6e-64; the
number counts TensorCores on v4/v5p, chips on v5e/v6e) or a libtpu topology (v5p:4x4x8,
v5e:2x2). With --config.mesh.dcn_data=N the target is N such slices (multi-slice). The train
step is built exactly as `muse_jax.train` builds it (stage, mesh, shardings, donation), lowered
and compiled by libtpu. Printed: per-chip memory (arguments, outputs, aliased, temporaries,
generated code; from the executable's memory analysis), the count and bytes of each collective
kind in the optimized HLO, and FLOPs (XLA's cost analysis and the analytic model FLOPs).

Needs libtpu: pip install -e ".[tpu]" (jax[tpu] at the pinned jax version).

Exit status: 0 the step compiles and fits each chip's HBM; 2 it does not fit (one line naming
the shortfall), a bad config or mesh, an unknown topology, or libtpu is not installed.
"""
import json
import os

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Path to a configs/<name>.py file.",
                                lock_config=True)
flags.DEFINE_string("topology", None, "TPU target: v5p-256, v4-512, v5e:2x2, ...")
flags.DEFINE_string("json", "", "Also write the report as JSON to this file.")
flags.DEFINE_string("hlo", "", "Also write the optimized HLO (the compiled program) to this file.")
flags.mark_flags_as_required(["config", "topology"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if "JAX_PLATFORMS" not in os.environ:
    # Compiling needs no accelerator: JAX stays on the CPU, also on a TPU VM whose chips a
    # running job may hold. (The config file imported JAX already, so this is a config update.)
    import jax
    jax.config.update("jax_platforms", "cpu")
  from muse_jax.cli import run_or_exit
  from muse_jax.parallel.topology import TopologyError, parse_target
  from muse_jax.training import aot
  config = FLAGS.config

  def run():
    target = parse_target(FLAGS.topology, int(config.mesh.get("dcn_data", 1)))
    steps, compiled, seconds = aot.compile_for(config, target)
    rep = aot.report(steps, compiled, target, seconds)
    print("\n".join(aot.format_report(rep, config)), flush=True)
    if FLAGS.hlo:
      with open(FLAGS.hlo, "w") as f:
        f.write(compiled.as_text())
    if FLAGS.json:
      with open(FLAGS.json, "w") as f:
        json.dump(rep.to_dict(), f, indent=1)
    aot.check_fits(rep)

  run_or_exit(run, user_errors=(TopologyError, aot.DoesNotFit))


if __name__ == "__main__":
  app.run(main)
