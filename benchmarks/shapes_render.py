"""Where the host time of one shapes scene goes: sampling, layout, rendering, all of generate().

  python benchmarks/shapes_render.py                        # the demos' 32 + 64 px, 2000 scenes
  python benchmarks/shapes_render.py --resolutions=256,512 --num=500
  python benchmarks/shapes_render.py --baseline=/tmp/old    # also time another checkout's layout
  python benchmarks/shapes_render.py --processes=0,2         # also drawing in worker processes

Prints microseconds per scene (one thread) for
  sample      the scene (groups, position or relation) from its seeded generator
  layout      `layout.layout_scene`: object placement by rejection sampling
  render R    `render.render` at each resolution R (PIL, supersampled, box-resized)
  generate    the whole `dataset.generate` at all resolutions, as precompute's workers call it
and generate()'s scenes/s on --threads threads, as `preprocess_stream` runs it in precompute.
--baseline=DIR times DIR/muse_jax/data/shapes/{layout,render}.py's `layout_scene` and `render`
on the same scenes in the same process, interleaved with this checkout's, and checks that the
layouts and images are equal. Each
figure is the median of --repeats passes. Not a test: only the baseline's outputs are compared.

--processes=0,2 also times the two places that draw scenes, serially (0) and on that many
spawned processes (data/workers.py), each the median of --repeats fresh runs:
  precompute  ShapesSource (data.shapes.processes) through `preprocess_stream` on --stream_threads
              threads (data.num_workers), --num scenes at all resolutions, from the first
              request to the last record, process start-up included
  vqgan       ImageSource (the vqgan stage's data.num_workers) at the largest resolution,
              batches of --batch, --num scenes after a first batch that starts the workers
"""
from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import itertools
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from muse_jax.data import preprocess, raw_sources  # pylint: disable=g-import-not-at-top
from muse_jax.data.images import ImageSource  # pylint: disable=g-import-not-at-top
from muse_jax.data.shapes import dataset, layout, render  # pylint: disable=g-import-not-at-top

SPLIT_ID = dataset.SPLITS.index("train")


def _load_baseline(root: str, name: str):
  path = os.path.join(root, "muse_jax", "data", "shapes", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"baseline_{name}", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def _scenes(num: int, seed: int):
  out = []
  for i in range(num):
    rng = np.random.default_rng([seed, SPLIT_ID, i])
    out.append((dataset._sample_scene(rng, "train", dataset.MAX_COUNT, 0.5),  # pylint: disable=protected-access
                rng.bit_generator.state))
  return out


def _per_scene_us(fn, items) -> float:
  t = time.perf_counter()
  for item in items:
    fn(item)
  return 1e6 * (time.perf_counter() - t) / len(items)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--resolutions", default="32,64")
  p.add_argument("--num", type=int, default=2000)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--threads", default="1,2,8")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--baseline", default="",
                 help="a checkout whose layout_scene and render to time as well")
  p.add_argument("--processes", default="",
                 help="e.g. 0,2: time precompute's and the vqgan stage's drawing on that many "
                 "worker processes (0 = serial) instead of the parts")
  p.add_argument("--stream_threads", type=int, default=2,
                 help="preprocessing threads in the precompute timing (data.num_workers)")
  p.add_argument("--batch", type=int, default=16, help="vqgan batch in the processes timing")
  args = p.parse_args()
  res = tuple(int(r) for r in args.resolutions.split(","))
  if args.processes:
    processes_report(args, res)
    return
  n = args.num
  scenes = _scenes(n, args.seed)

  def layout_with(module):
    def fn(item):
      rng = np.random.default_rng()
      rng.bit_generator.state = item[1]
      return module.layout_scene(item[0], rng)
    return fn

  objects = [layout_with(layout)(s) for s in scenes]
  parts = {
      "sample": lambda i: dataset._sample_scene(  # pylint: disable=protected-access
          np.random.default_rng([args.seed, SPLIT_ID, i]), "train", dataset.MAX_COUNT, 0.5),
      "layout": lambda i: layout_with(layout)(scenes[i]),
  }
  if args.baseline:
    base = _load_baseline(args.baseline, "layout")
    base_render = _load_baseline(args.baseline, "render")
    fields = lambda objs: [(o.colour, o.shape, o.cx, o.cy, o.size) for o in objs]
    same = all(fields(layout_with(base)(s)) == fields(o) for s, o in zip(scenes, objects))
    print(f"baseline layouts equal to this checkout's on {n} scenes: {same}")
    parts["layout (baseline)"] = lambda i: layout_with(base)(scenes[i])
  for r in res:
    parts[f"render {r}"] = lambda i, r=r: render.render(objects[i], r)
    if args.baseline:
      same = all(np.array_equal(render.render(o, r), base_render.render(o, r)) for o in objects)
      print(f"baseline images at {r} px equal to this checkout's on {n} scenes: {same}")
      parts[f"render {r} (baseline)"] = lambda i, r=r: base_render.render(objects[i], r)
  parts["generate"] = lambda i: dataset.generate(i, "train", args.seed, res)
  times: dict[str, list[float]] = {k: [] for k in parts}
  for _ in range(args.repeats):  # the parts take turns, so load changes hit them alike
    for name, fn in parts.items():
      times[name].append(_per_scene_us(fn, range(n)))
  print(f"{n} scenes at {res} px, load average {os.getloadavg()[0]:.2f}")
  print(f"{'part':<20} {'us/scene':>10}")
  for name, ts in times.items():
    print(f"{name:<20} {statistics.median(ts):10.1f}")
  for threads in (int(t) for t in args.threads.split(",")):
    rates = []
    for _ in range(args.repeats):
      with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        t = time.perf_counter()
        list(pool.map(lambda i: dataset.generate(i, "train", args.seed, res), range(n)))
        rates.append(n / (time.perf_counter() - t))
    print(f"generate on {threads} thread(s): {statistics.median(rates):.1f} scenes/s")


def _precompute_rate(n: int, res, processes: int, threads: int, seed: int) -> float:
  source = raw_sources.ShapesSource("train", n, seed, res, processes=processes)
  t = time.perf_counter()
  got = sum(1 for _ in preprocess.preprocess_stream(
      source.raw_examples(), preprocess.PreprocessOptions(resolutions=res),
      preprocess.SkipCounter(record_ids=False), num_workers=threads))
  rate = got / (time.perf_counter() - t)
  source.close()
  return rate


def _vqgan_rate(n: int, size: int, batch: int, processes: int, seed: int) -> float:
  source = ImageSource("shapes", size, seed=seed, split="train", global_batch=batch,
                       num_workers=processes)
  next(source)
  t = time.perf_counter()
  steps = max(1, n // batch)
  for _ in itertools.islice(source, steps):
    pass
  rate = steps * batch / (time.perf_counter() - t)
  source.close()
  return rate


def processes_report(args, res) -> None:
  for processes in (int(p) for p in args.processes.split(",")):
    pre = [_precompute_rate(args.num, res, processes, args.stream_threads, args.seed)
           for _ in range(args.repeats)]
    vq = [_vqgan_rate(args.num, max(res), args.batch, processes, args.seed)
          for _ in range(args.repeats)]
    print(f"{processes} process(es): precompute {statistics.median(pre):.1f} scenes/s "
          f"({args.stream_threads} threads), vqgan {statistics.median(vq):.1f} scenes/s "
          f"({max(res)} px, batch {args.batch}); load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
