r"""The sampler's small matmuls (M = 512 rows: batch 1 x 2 CFG rows x 256 tokens) on cold
weights: cuBLAS (through XLA, with the sampler's compiler options) against the Hopper Mosaic GPU
matmul that ships with JAX (`jax.experimental.pallas.ops.gpu.hopper_matmul_mgpu`), over its
tilings. Needs an H100/H200.

  python benchmarks/sampler_gemms.py [--shapes=qkv,mlp_up] [--budget_s=60] [--layers=40]

Shapes are those of the aMUSEd-size row of benchmarks/sample.py (hidden 1024, MLP 4096); `out`
and `mlp_down` add the residual in the epilogue, as the sampler does. Each measurement runs
`--layers` gemms in one jit, each on its own weight matrix (together larger than the L2 cache,
as in the decoding loop) and its own input (so XLA cannot merge them into one gemm), and reports
the median kernel time from a profiler trace and the relative error against XLA. `--budget_s` caps
each shape's Mosaic sweep. The table is printed last.
"""
import argparse
import collections
import itertools
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.trace_summary import category, device_events  # noqa: E402

M = 512
SHAPES = dict(qkv=(1024, 3072, False), cross_q=(1024, 1024, False), out=(1024, 1024, True),
              mlp_up=(1024, 4096, False), mlp_down=(4096, 1024, True))


def kernel_us(fn, args, n_gemms, runs=5):
  """Median duration of the kernel that ran `n_gemms` times per call (the gemm)."""
  import jax
  jax.block_until_ready(fn(*args))
  trace = tempfile.mkdtemp()
  with jax.profiler.trace(trace):
    for _ in range(runs):
      out = fn(*args)
    jax.block_until_ready(out)
  durs = collections.defaultdict(list)
  for name, dur in device_events(trace):
    durs[name].append(dur)
  gemms = [n for n, d in durs.items()
           if len(d) == n_gemms * runs and category(n) != "copy/transpose"]
  if not gemms:
    raise RuntimeError(f"no kernel ran {n_gemms} x {runs} times: {sorted(durs)[:8]}")
  name = max(gemms, key=lambda n: sum(durs[n]))
  return statistics.median(durs[name]), name


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--shapes", default=",".join(SHAPES), help=f"from {','.join(SHAPES)}")
  p.add_argument("--layers", type=int, default=40, help="gemms (weight matrices) per call")
  p.add_argument("--budget_s", type=float, default=60.0, help="Mosaic sweep time per shape")
  args = p.parse_args(argv)
  import jax
  import jax.numpy as jnp
  from jax.experimental.pallas.ops.gpu import hopper_matmul_mgpu as H
  from muse_jax.sampling.pipeline import GPU_SAMPLER_OPTIONS
  if jax.default_backend() != "gpu":
    raise SystemExit("benchmarks/sampler_gemms.py needs a Hopper GPU (Mosaic GPU kernels)")

  def rel_err(a, b):
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))

  rows = []
  for sname in [s.strip() for s in args.shapes.split(",") if s.strip()]:
    k_dim, n_dim, resid = SHAPES[sname]
    key = jax.random.fold_in(jax.random.key(0), len(rows))
    kx, kw, kc = jax.random.split(key, 3)
    xs = [jax.random.normal(jax.random.fold_in(kx, i), (M, k_dim), jnp.bfloat16)
          for i in range(args.layers)]
    ws = [(jax.random.normal(jax.random.fold_in(kw, i), (k_dim, n_dim)) * k_dim ** -0.5)
          .astype(jnp.bfloat16) for i in range(args.layers)]
    c = jax.random.normal(kc, (M, n_dim), jnp.bfloat16) if resid else None
    xla = jax.jit(lambda xs, ws, c: [x @ w + (0 if c is None else c) for x, w in zip(xs, ws)],
                  compiler_options=dict(GPU_SAMPLER_OPTIONS))
    ref = xla(xs, ws, c)[0]
    us, name = kernel_us(xla, (xs, ws, c), args.layers)
    rows.append((sname, "cuBLAS (XLA)", us, 0.0))
    print(f"{sname}: cuBLAS {us:.2f} us ({name[:60]})", flush=True)
    t0 = time.time()
    best = None
    for tm, tn, wg, cl in itertools.product((64, 128), (64, 128, 256), "MN", (None, "M", "N")):
      if time.time() - t0 > args.budget_s:
        print(f"  sweep stopped after {args.budget_s:.0f} s (--budget_s)")
        break
      cta_m = tm * (2 if wg == "M" else 1) * (2 if cl == "M" else 1)
      cta_n = tn * (2 if wg == "N" else 1) * (2 if cl == "N" else 1)
      if M % cta_m or n_dim % cta_n:
        continue
      cfg = H.TuningConfig(tile_m=tm, tile_n=tn, tile_k=64, max_concurrent_steps=4,
                           epi_tile_m=64, epi_tile_n=64, wg_dimension=H.MatmulDimension[wg],
                           cluster_dimension=None if cl is None else H.MatmulDimension[cl])
      label = f"Mosaic {tm}x{tn} wg={wg} cluster={cl}"
      f = jax.jit(lambda xs, ws, c, cfg=cfg: [H.matmul(x, w, c, cfg) for x, w in zip(xs, ws)])
      try:
        err = rel_err(f(xs[:1], ws[:1], c)[0], ref)
        us, _ = kernel_us(f, (xs, ws, c), args.layers)
      except Exception as e:  # a tiling that does not fit (shared memory) or does not lower
        print(f"  {label}: {type(e).__name__}: {str(e)[:100]}")
        continue
      print(f"  {label}: {us:.2f} us, rel. error {err:.1e}", flush=True)
      if err < 1e-2 and (best is None or us < best[2]):
        best = (sname, label, us, err)
    if best:
      rows.append(best)

  print(f"\n== sampler gemms, M={M}, {args.layers} cold weight matrices per call "
        f"({jax.devices()[0].device_kind})")
  print(f"{'shape':9s} {'kernel':34s} {'us':>7s} {'rel. err':>9s}")
  for sname, label, us, err in rows:
    print(f"{sname:9s} {label:34s} {us:7.2f} {err:9.1e}")


if __name__ == "__main__":
  main()
