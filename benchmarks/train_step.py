r"""Train-step throughput of a stage: compile time, step time, examples/s, tokens/s, MFU.

  python benchmarks/train_step.py --config=configs/base_632m.py \
      --config.train.batch_size=256 [--steps=20 --warmup=3]

Uses one fixed synthetic batch already on the devices (input cost excluded) and the real
jitted train step of `muse_jax.training.loop.Trainer` (same shardings, donation, optimizer).
MFU = analytic model FLOPs (6*N*tokens-style count of every matmul incl. attention, see
muse_jax/training/flops.py) / (step time x devices x the dense bf16 peak, also with
`--config.model.fp8_training=True`). XLA's own FLOP count of the compiled
step is printed beside it (it includes rematerialised recomputation).

A demo stage, as `python -m muse_jax.demo` builds it from a demo config (synthetic batches of
its shapes; no evaluation of samples):

  python benchmarks/train_step.py --config=configs/demo_gpu.py --demo_stage=base \
      [--config.base.model.hidden_size=768 --config.base.model.num_heads=12]

Multi-process (one process per GPU): run it under launch/local.py, which adds the
jax.distributed flags; process 0 prints. --result_json=FILE also writes the figures as JSON
(benchmarks/scaling.py reads them).
"""
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "configs/<name>.py", lock_config=True)
flags.DEFINE_integer("steps", 20, "Timed steps.")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
flags.DEFINE_string("result_json", None, "Also write the figures to this JSON file.")
flags.DEFINE_enum("demo_stage", None, ["base", "sr"],
                  "--config is a demo config (configs/demo_*.py): time this stage of it.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS

from muse_jax.parallel import distributed  # noqa: E402

distributed.define_flags()


def main(_):
  distributed.initialize_from_flags()  # before anything touches the devices
  import jax
  import numpy as np
  from muse_jax.training.flops import peak_flops_per_device
  from muse_jax.training.loop import Trainer

  with tempfile.TemporaryDirectory() as tmp:
    cfg = FLAGS.config
    if FLAGS.demo_stage:
      from muse_jax.demo.stage_configs import stage_configs
      cfg = stage_configs(cfg, tmp)[FLAGS.demo_stage]
      cfg.data.source = "synthetic"
      cfg.eval.samples.every = 0
    cfg.train.tensorboard = False
    cfg.train.eval_every = 0
    t = Trainer(cfg, tmp)
    b = int(cfg.train.batch_size)
    state, batch = t.fresh_state_and_batch()
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    compiled = t.train_step_fn.lower(state, batch, np.int32(0)).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0
    for i in range(FLAGS.warmup):
      state, _ = compiled(state, batch, np.int32(i))
    jax.block_until_ready(state)  # also with --warmup=0
    t0 = time.perf_counter()
    for i in range(FLAGS.steps):
      state, m = compiled(state, batch, np.int32(FLAGS.warmup + i))
    jax.block_until_ready(m)
    step_s = (time.perf_counter() - t0) / FLAGS.steps
    loss = float(m["loss"])

  n_dev = jax.device_count()
  flops = t.stage.flops_per_example() * b
  peak = peak_flops_per_device(jax.devices()[0], cfg.train.peak_tflops_per_device)
  tokens = b * int(cfg.model.grid_size) ** 2
  # peak over this process's devices (process 0's; the others' are alike by symmetry)
  peak_mem = max((d.memory_stats() or {}).get("peak_bytes_in_use", 0)
                 for d in jax.local_devices())
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t.stage.fm.abstract_params()))
  m = cfg.model
  rows = [
      ("device", f"{n_dev} x {jax.devices()[0].device_kind}"),
      ("params", f"{n_params / 1e6:.1f}M"),
      ("batch (global / per device)", f"{b} / {b // n_dev}"),
      ("attention / remat / scan", f"{m.attention} / {m.remat} / {m.scan_layers}"),
      # FP8 matmuls still count against the dense bf16 peak (the MFU row's denominator)
      ("block matmuls", "fp8" if m.get("fp8_training", False) else m.get("dtype", "n/a")),
      ("optimizer", cfg.optimizer.name),
      ("compile", f"{compile_s:.1f} s"),
      ("step time", f"{1e3 * step_s:.1f} ms"),
      ("examples/s", f"{b / step_s:.1f}"),
      ("tokens/s", f"{tokens / step_s:.0f}"),
      ("model TFLOP/s per device", f"{flops / step_s / n_dev / 1e12:.1f}"),
      ("MFU (model FLOPs)", f"{100 * flops / step_s / n_dev / peak:.1f}%" if peak else "n/a"),
      # cost_analysis() counts one SPMD partition: scale by the device count
      ("XLA FLOPs / model FLOPs",
       f"{xla_flops * n_dev / flops:.3f}" if flops and xla_flops else "n/a"),
      ("peak memory per device", f"{peak_mem / 2**30:.1f} GiB"),
      ("final loss (finite?)", f"{loss:.3f}"),
  ]
  if jax.process_index():
    return
  if FLAGS.result_json:
    with open(FLAGS.result_json, "w") as f:
      json.dump(dict(devices=n_dev, processes=jax.process_count(), batch=b,
                     step_s=step_s, examples_per_s=b / step_s, compile_s=compile_s,
                     mfu=flops / step_s / n_dev / peak if peak else None,
                     peak_bytes_per_device=peak_mem, loss=loss), f)
  width = max(len(r[0]) for r in rows)
  print("== train_step")
  for k, v in rows:
    print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
  app.run(main)
