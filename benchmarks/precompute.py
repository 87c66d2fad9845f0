"""Throughput of precompute (raw shapes -> shards) and of the training input over the shards.

  python benchmarks/precompute.py                                # shapes_precompute, 512 images
  python benchmarks/precompute.py --num=2048 --batch=64 --workdir=/tmp/bench_pre
  taskset -c 0,1 python benchmarks/precompute.py --input_only --workdir=/tmp/bench_pre

Prints examples/s for
  precompute   configs/shapes_precompute.py (64 px, tiny random f8 VQ + tiny T5) on the local
               devices, after model construction and the first (compiling) batch; this is
               rendering + tokenizer + T5 + record encoding + writing
  input/tf     the tf.data reader (shuffle, parse, pad, batch) of the train split, batches of
               --train_batch rows, after the first batch (pipeline start-up)
  input/numpy  the in-memory numpy reader (loading the records is reported separately)
Pin to cores with taskset to measure "2 CPU cores". Not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import shapes_base_tiny, shapes_precompute  # pylint: disable=g-import-not-at-top
from muse_jax.data import input_pipeline, precompute  # pylint: disable=g-import-not-at-top
from muse_jax.training.base_stage import BaseStage  # pylint: disable=g-import-not-at-top


def bench_precompute(workdir: str, num: int, batch: int) -> None:
  c = shapes_precompute.get_config()
  c.data.shapes.update(dict(num_train=num, num_heldout=batch))
  c.precompute.update(dict(batch_size=batch, examples_per_shard=max(num // 4, batch),
                           log_every=10_000))
  out = io.StringIO()
  t0 = time.perf_counter()
  precompute.run_precompute(c, workdir, stream=out)
  total = time.perf_counter() - t0
  ready = float(out.getvalue().split("models ready in ")[1].split("s")[0])
  rate = [l for l in out.getvalue().splitlines() if l.startswith("precompute train:") and
          "written of" in l][0].split("this run ")[1].split(" examples/s")[0]
  print(f"precompute: {num} images in {total:.1f}s (models {ready:.1f}s); train split "
        f"{rate} examples/s incl. the first compile")
  # Steady state: a second run over fresh shards with the models already compiled.
  models = precompute.build_models(c, _mesh(c), os.path.join(workdir, "spiece.model"))
  again = tempfile.mkdtemp()
  shutil.copy(os.path.join(workdir, "spiece.model"), again)
  precompute.run_precompute(c, again, stream=io.StringIO(), models_fn=lambda *a: models)
  shutil.rmtree(again)
  again = tempfile.mkdtemp()
  shutil.copy(os.path.join(workdir, "spiece.model"), again)
  t0 = time.perf_counter()
  precompute.run_precompute(c, again, stream=io.StringIO(), models_fn=lambda *a: models)
  dt = time.perf_counter() - t0
  shutil.rmtree(again)
  print(f"precompute (compiled): {(num + batch) / dt:.1f} examples/s")


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
  args = p.parse_args()
  workdir = args.workdir or tempfile.mkdtemp()
  if not args.input_only:
    bench_precompute(workdir, args.num, args.batch)
  for reader in ("tf", "numpy"):
    bench_input(workdir, reader, args.train_batch, args.steps)


if __name__ == "__main__":
  main()
