r"""Host cost of one jitted call against its number of array arguments.

  python benchmarks/dispatch.py [--args=1,10,100,316,421] [--calls=200]

Why the samplers keep each stack's weights as a few stacked arrays instead of one array per
layer: every argument costs the call host time, and at batch 1 that time is latency. Each
case jits a function of N [1024, 1024] bf16 arrays that reads one element of each, with
default options and with the samplers' (muse_jax.sampling.stage_fns.GPU_SAMPLER_OPTIONS on a
GPU), compiles it, and reports the median wall time of one call, dispatch to result
(`benchmarks.sample.timed`, as the sampling benchmark times its rows).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--args", default="1,10,100,316,421", help="argument counts, comma-separated")
  p.add_argument("--calls", type=int, default=200, help="timed calls per case")
  args = p.parse_args(argv)
  import jax
  import jax.numpy as jnp
  from benchmarks.sample import timed
  from muse_jax.sampling.stage_fns import sampler_compiler_options
  counts = [int(n) for n in args.args.split(",")]
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()})")
  print("| options | arguments | us per call |\n|---|---|---|")
  for name, opts in (("default", {}), ("sampler", sampler_compiler_options())):
    for n in counts:
      xs = tuple(jnp.full((1024, 1024), i, jnp.bfloat16) for i in range(n))
      fn = jax.jit(lambda xs: sum(x[0, 0].astype(jnp.float32) for x in xs),
                   compiler_options=opts)
      _, median_s, _ = timed(fn, xs, runs=args.calls, warmup=10)
      print(f"| {name} | {n} | {1e6 * median_s:.1f} |", flush=True)


if __name__ == "__main__":
  main()
