"""Throughput of precompute (raw shapes -> shards) and of the training input over the shards.

  python benchmarks/precompute.py                                # shapes_precompute, 512 images
  python benchmarks/precompute.py --num=2048 --batch=64 --workdir=/tmp/bench_pre
  python benchmarks/precompute.py --full --num=4096 --batch=128   # GPU: full-size models
  python benchmarks/precompute.py --parts --batch=128 --workers=12  # GPU: where the time goes
  taskset -c 0,1 python benchmarks/precompute.py --input_only --workdir=/tmp/bench_pre
  python launch/local.py --num_processes=2 --gpus_per_process=1 -- benchmarks/precompute.py \
      --full --num=2048 --batch=128 --workdir=/tmp/bench_pre2   # 2 processes, one shared dir

Prints examples/s for
  precompute   configs/shapes_precompute.py (64 px, tiny random f8 VQ + tiny T5) on the local
               devices, after model construction and the first (compiling) batch; this is
               rendering + tokenizer + T5 + record encoding + writing.
               --full: the paper's sizes with random bf16 weights instead: T5-XXL (128
               tokens, cuDNN attention), f16 VQ at 256 px (16x16 tokens) and the f8 SR
               tokenizer at 512 px (64x64 tokens); shapes rendered on --workers threads.
               The input benchmarks are skipped (they need TensorFlow).
  input/tf     the tf.data reader (shuffle, parse, pad, batch) of the train split, batches of
               --train_batch rows, after the first batch (pipeline start-up)
  input/numpy  the in-memory numpy reader (loading the records is reported separately)
Under launch/local.py (several processes, jax.distributed) only precompute runs: --batch is the
global batch, each process renders and encodes its own slice into the shared --workdir, and
process 0 prints the job's examples/s (benchmarks/scaling.py --precompute runs 1..N).
Pin to cores with taskset to measure "2 CPU cores". Not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import shapes_base_tiny, shapes_precompute  # pylint: disable=g-import-not-at-top
from muse_jax.configs import common_t5, common_vqgan  # pylint: disable=g-import-not-at-top
from muse_jax.data import input_pipeline
from muse_jax.precompute import run as precompute  # pylint: disable=g-import-not-at-top
from muse_jax.training.base_stage import BaseStage  # pylint: disable=g-import-not-at-top


def full_size_config(workers: int):
  """shapes_precompute with the paper's model sizes (random bf16 weights)."""
  c = shapes_precompute.get_config()
  c.tokenizer = shapes_precompute.tokenizer_section(256)
  c.tokenizer.model = common_vqgan.vqgan_model("f16")
  c.sr_tokenizer = shapes_precompute.tokenizer_section(512, seed=1)
  c.sr_tokenizer.model = common_vqgan.vqgan_model("f8")
  c.text_encoder = common_t5.text_encoder_config("xxl")
  c.text_encoder.attention = "cudnn"
  c.data.num_workers = workers
  return c


def bench_parts(c, batch: int, workers: int, reps: int = 5) -> None:
  """examples/s of each part of precompute on its own: rendering, each model, all models."""
  import concurrent.futures

  import jax
  import numpy as np

  from muse_jax.data.shapes import dataset as shapes
  res = (int(c.tokenizer.resolution), int(c.sr_tokenizer.resolution))
  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    examples = list(pool.map(lambda i: shapes.generate(i, "train", 0, resolution=res),
                             range(4 * batch)))
  print(f"  render {res} px on {workers} threads: "
        f"{4 * batch / (time.perf_counter() - t0):.1f} examples/s", flush=True)
  examples = examples[:batch]
  lo = np.stack([e.image[res[0]] for e in examples])
  hi = np.stack([e.image[res[1]] for e in examples])
  captions = [e.caption for e in examples]
  spiece = os.path.join(tempfile.mkdtemp(), "spiece.model")
  with open(spiece, "wb") as f:
    f.write(precompute.train_spiece_model(
        [shapes.generate(i, "train", 0, resolution=16).caption for i in range(2000)],
        int(c.precompute.spiece_vocab_size)))
  t0 = time.perf_counter()
  models = precompute.build_models(c, _mesh(c), spiece)
  print(f"  models built in {time.perf_counter() - t0:.1f}s", flush=True)
  tok = models.text_encoder.tokenize(captions)
  parts = {
      f"vq f16 encode {res[0]}px": lambda: models.tokenizer.encode(lo),
      f"vq f8 encode {res[1]}px": lambda: models.sr_tokenizer.encode(hi),
      "t5-xxl encode (tokenized)": lambda: models.text_encoder.encode_tokens(tok.ids, tok.mask),
      "all models (Models.run)": lambda: models.run(lo, hi, captions),
  }
  for name, fn in parts.items():
    jax.block_until_ready(fn())
    t0 = time.perf_counter()
    for _ in range(reps):
      jax.block_until_ready(fn())
    print(f"  {name}: {reps * batch / (time.perf_counter() - t0):.1f} examples/s "
          f"(batch {batch})", flush=True)


def bench_precompute(c, workdir: str, num: int, batch: int) -> dict:
  """Precompute `num` shapes images into `workdir`, then twice more with the models built and
  compiled (the second timed). With several processes (jax.distributed), `workdir` is shared,
  `batch` is global and each process renders and encodes its own slice; process 0 prints."""
  import jax
  from jax.experimental import multihost_utils

  def barrier(name):
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(name)

  lead = jax.process_index() == 0
  c.data.shapes.update(dict(num_train=num, num_heldout=batch))
  c.precompute.update(dict(batch_size=batch, examples_per_shard=max(num // 4, batch),
                           log_every=10_000))
  out = io.StringIO()
  t0 = time.perf_counter()
  precompute.run_precompute(c, workdir, stream=out)
  total = time.perf_counter() - t0
  result = dict(processes=jax.process_count(), devices=jax.device_count(), num=num,
                batch=batch, first_run_s=total)
  if lead:
    ready = float(out.getvalue().split("models ready in ")[1].split("s")[0])
    rate = [l for l in out.getvalue().splitlines() if l.startswith("precompute train:") and
            "written of" in l][0].split("this run ")[1].split(" examples/s")[0]
    print(f"precompute: {num} images in {total:.1f}s (models {ready:.1f}s); train split "
          f"{rate} examples/s on process 0 incl. the first compile", flush=True)
  # Steady state: two more runs over fresh shards with the models already compiled; the
  # second is timed. run_precompute ends with a barrier, so process 0's time is the job's.
  spiece = os.path.join(workdir, "spiece.model")
  models = precompute.build_models(c, _mesh(c), spiece)
  for i in (1, 2):
    again = os.path.join(workdir, f"again{i}")
    if lead:
      os.makedirs(again)
      shutil.copy(spiece, again)
    barrier(f"again{i}")
    t0 = time.perf_counter()
    precompute.run_precompute(c, again, stream=io.StringIO(), models_fn=lambda *a: models)
    dt = time.perf_counter() - t0
    if lead:
      shutil.rmtree(again)
  result["examples_per_s"] = (num + batch) / dt  # train + heldout split
  if lead:
    print(f"precompute (compiled): {result['examples_per_s']:.1f} examples/s "
          f"({jax.process_count()} process(es), {jax.device_count()} devices)", flush=True)
  return result


def _mesh(c):
  from muse_jax.parallel.mesh import make_mesh
  return make_mesh(c.mesh)


def bench_input(workdir: str, reader: str, batch: int, steps: int) -> None:
  c = shapes_base_tiny.get_config()
  c.data.update(dict(path=workdir, reader=reader))
  c.train.batch_size = batch
  stage = types.SimpleNamespace(config=c)
  stage.features = lambda: BaseStage.features(stage)
  t0 = time.perf_counter()
  src = input_pipeline.make_token_source(stage, "train", 0, 1)
  next(src)
  start = time.perf_counter()
  for _ in range(steps):
    next(src)
  dt = time.perf_counter() - start
  print(f"input/{reader}: {steps * batch / dt:.0f} examples/s ({steps} batches of {batch}; "
        f"start-up {start - t0:.1f}s)")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--num", type=int, default=512)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--train_batch", type=int, default=256)
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--workdir", default="")
  p.add_argument("--input_only", action="store_true")
  p.add_argument("--full", action="store_true",
                 help="full-size random models (T5-XXL, f16@256, f8@512); see above")
  p.add_argument("--workers", type=int, default=8, help="rendering threads with --full")
  p.add_argument("--parts", action="store_true",
                 help="with the --full models: time rendering, each model and all models "
                      "separately, then stop")
  p.add_argument("--precompute_only", action="store_true",
                 help="skip the input benchmarks (as --full and several processes do)")
  p.add_argument("--result_json", default="",
                 help="process 0 also writes the precompute figures to this JSON file")
  multi = p.add_argument_group(
      "multi-process", "jax.distributed, as launch/local.py passes them; several processes "
      "need one shared --workdir, and --batch is then global")
  for name, kind in (("coordinator_address", str), ("num_processes", int),
                     ("process_id", int), ("cpu_collectives", str)):
    multi.add_argument(f"--{name}", type=kind, default=None)
  args = p.parse_args()
  if (args.num_processes or 1) > 1 and not args.workdir:
    p.error("several processes share one --workdir: give it")
  from muse_jax.parallel import distributed
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                         args.cpu_collectives)
  workdir = args.workdir or tempfile.mkdtemp()
  if args.parts:
    bench_parts(full_size_config(args.workers), args.batch, args.workers)
    return
  if not args.input_only:
    c = full_size_config(args.workers) if args.full else shapes_precompute.get_config()
    result = bench_precompute(c, workdir, args.num, args.batch)
    if args.result_json and not args.process_id:
      with open(args.result_json, "w") as f:
        json.dump(result, f)
  if args.full or args.num_processes or args.precompute_only:
    return
  for reader in ("tf", "numpy"):
    bench_input(workdir, reader, args.train_batch, args.steps)


if __name__ == "__main__":
  main()
