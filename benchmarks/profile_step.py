r"""Where a train step's time goes: profile a few steps and rank GPU kernels by total time.

  python benchmarks/profile_step.py --config=configs/base_632m.py \
      --config.train.batch_size=64 [--steps=3 --out=/tmp/prof --top=30]

Compiles the real jitted train step (as benchmarks/train_step.py), times --timed_steps of it
without the profiler (its wall time and MFU: one compile gives both the step and its floor),
runs --steps more under `jax.profiler.trace` with a Perfetto trace, then sums device-side
events by kernel name and by category (matmul, attention, elementwise/fusion, copies,
collectives, other) and prints the table; then the step's floor (the model FLOPs split into
attention's score and value products and the other matmuls, the rate of each from its kernels'
time, and the MFU if no other kernel took any time; with --goal_mfu=P, how long the other
kernels may take for P% MFU); then what the largest fusions compute (output shape and ops, from
the compiled step's optimized HLO) and the bytes each reads and writes, with the rate that
makes: a fusion near the HBM's bandwidth can only get faster by moving fewer bytes. The raw
trace stays in --out for Perfetto/TensorBoard.
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks.trace_summary import (  # noqa: E402
    category, floor_lines, fusion_lines, fusion_summaries, kernel_times)

config_flags.DEFINE_config_file("config", None, "configs/<name>.py", lock_config=True)
flags.DEFINE_integer("steps", 3, "Profiled steps (after the timed ones).")
flags.DEFINE_integer("timed_steps", 10, "Steps timed without the profiler, after compile and 2 "
                     "warm-up steps: the step's wall time and MFU (0: none).")
flags.DEFINE_string("out", "/tmp/muse_profile", "Trace directory.")
flags.DEFINE_integer("top", 30, "Kernels to list.")
flags.DEFINE_integer("fusions", 10, "Describe the largest N fusion kernels: output shape and "
                     "ops, from the compiled step's optimized HLO.")
flags.DEFINE_float("goal_mfu", 0.0, "With a goal MFU (percent), the floor section also says "
                   "how much time the kernels other than attention and matmuls may take.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS

def main(_):
  import jax
  import numpy as np
  from muse_jax.training.flops import peak_flops_per_device
  from muse_jax.training.loop import Trainer

  cfg = FLAGS.config
  cfg.train.tensorboard = False
  cfg.train.eval_every = 0
  with tempfile.TemporaryDirectory() as tmp:
    t = Trainer(cfg, tmp)
    state, batch = t.fresh_state_and_batch()
    step = t.train_step_fn.lower(state, batch, np.int32(0)).compile()
    hlo = step.as_text() if FLAGS.fusions else ""
    for i in range(2):
      state, m = step(state, batch, np.int32(i))
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for i in range(FLAGS.timed_steps):
      state, m = step(state, batch, np.int32(2 + i))
    jax.block_until_ready(m)
    step_s = (time.perf_counter() - t0) / FLAGS.timed_steps if FLAGS.timed_steps else None
    first = 2 + FLAGS.timed_steps
    with jax.profiler.trace(FLAGS.out, create_perfetto_trace=True):
      for i in range(FLAGS.steps):
        state, m = step(state, batch, np.int32(first + i))
      jax.block_until_ready(m)

  by_cat, by_name, count = kernel_times(FLAGS.out, FLAGS.steps)  # per step
  total = sum(by_name.values())
  b = cfg.train.batch_size
  flops = t.stage.flops_per_example() * b
  peak = peak_flops_per_device(jax.devices()[0], cfg.train.peak_tflops_per_device)
  n_dev = jax.device_count()
  if step_s:
    mfu = f", MFU {100 * flops / step_s / n_dev / peak:.1f}%" if peak and flops else ""
    print(f"== step: {step_s * 1e3:.1f} ms wall ({FLAGS.timed_steps} steps without the "
          f"profiler){mfu}")
  print(f"== device time per step: {total / 1e3:.1f} ms (sum of kernel durations)")
  for cat, dur in by_cat.most_common():
    print(f"  {cat:<20} {dur / 1e3:8.2f} ms  {100 * dur / total:5.1f}%")
  print(f"== top {FLAGS.top} kernels (ms per step, calls per step)")
  for name, dur in by_name.most_common(FLAGS.top):
    print(f"  {dur / 1e3:8.3f} ms {count[name] // FLAGS.steps:5d}x  "
          f"[{category(name)}] {name[:110]}")
  if peak and flops:
    print("\n".join(floor_lines(by_cat, flops, t.stage.flops_per_example(attention_only=True) * b,
                                peak, FLAGS.goal_mfu, step_s, n_dev)))
  fusions = [n for n, _ in by_name.most_common() if category(n) == "fusion/elementwise"]
  described = fusion_summaries(hlo, fusions[:FLAGS.fusions])
  if described:
    print("\n".join(fusion_lines(described, by_name, count, FLAGS.steps)))


if __name__ == "__main__":
  app.run(main)
