r"""Attention kernels at the samplers' shapes: cuDNN, XLA and the Pallas kernel
(muse_jax/models/pallas_attention.py), per call, and their error against a float32 reference.

  python benchmarks/attention.py [--cases=amused_self,amused_cross] [--calls=35]

Cases (batch = 2 x images: CFG's cond + uncond rows):
  amused_self    B=2,  T=256,  16 heads x 64, from the fused qkv projection (aMUSEd-size row)
  amused_cross   B=2,  T=256 -> S=128 text keys, half the rows masked at length 77
  b16_self       B=32, T=256,  16 heads x 64 (base256_b16 row)
  sr_self        B=2,  T=4096, 16 heads x 64 (sr_268m's 64x64 tokens)
  sr_cross       B=2,  T=4096 -> S=512 (low-res 256 + text 128, padded), masked at 300
Each implementation runs `--calls` attentions in one jit, each on its own input (as the layers
of one decoding step), with the samplers' compiler options; reported: the median of 20 calls'
wall time divided by `--calls` (us per attention, launch gaps included). For cuDNN and XLA
with a fused qkv, the split of q, k, v out of it is part of the timed work, as in the model.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = dict(
    amused_self=(2, 256, 256, 16, 64, None, True),
    amused_cross=(2, 256, 128, 16, 64, 77, False),
    b16_self=(32, 256, 256, 16, 64, None, True),
    sr_self=(2, 4096, 4096, 16, 64, None, True),
    sr_cross=(2, 4096, 512, 16, 64, 300, False),
)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--cases", default=",".join(CASES), help=f"from {','.join(CASES)}")
  p.add_argument("--calls", type=int, default=35, help="attentions per jitted call")
  p.add_argument("--impls", default="cudnn,xla,pallas")
  args = p.parse_args(argv)
  import jax
  import jax.numpy as jnp
  from muse_jax.models import layers as L
  from muse_jax.models import pallas_attention as PA
  from muse_jax.sampling.stage_fns import sampler_compiler_options
  on_gpu = jax.default_backend() == "gpu"
  rows = []
  for name in [c.strip() for c in args.cases.split(",") if c.strip()]:
    b, t, s, n, h, length, fused = CASES[name]
    key = jax.random.key(len(rows))
    if fused:
      xs = [jax.random.normal(jax.random.fold_in(key, i), (b, t, 3, n, h), jnp.bfloat16)
            for i in range(args.calls)]
    else:
      xs = [tuple(jax.random.normal(jax.random.fold_in(key, 3 * i + j), shp, jnp.bfloat16)
                  for j, shp in enumerate(((b, t, n, h), (b, s, n, h), (b, s, n, h))))
            for i in range(args.calls)]
    lens = None if length is None else jnp.array([s, length] * (b // 2), jnp.int32)

    def split(x):
      return (x[:, :, 0], x[:, :, 1], x[:, :, 2]) if fused else x

    def one(impl, x):
      if impl == "pallas":
        return PA.qkv_attention(x) if fused else PA.attention(*x, lens)
      return L.attention(*split(x), kv_lengths=lens, implementation=impl)

    ref = L.attention(*(a.astype(jnp.float32) for a in split(xs[0])), kv_lengths=lens)
    for impl in [i.strip() for i in args.impls.split(",")]:
      if impl in ("cudnn", "pallas") and not on_gpu:
        continue
      fn = jax.jit(lambda xs, impl=impl: [one(impl, x) for x in xs],
                   compiler_options=sampler_compiler_options())
      try:
        outs = jax.block_until_ready(fn(xs))
      except Exception as e:  # noqa: BLE001 - report and go on
        rows.append((name, impl, float("nan"), f"{type(e).__name__}: {str(e)[:80]}"))
        continue
      err = float(jnp.linalg.norm(outs[0].astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
      times = []
      for _ in range(20):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(xs))
        times.append(time.perf_counter() - t0)
      us = statistics.median(times) / args.calls * 1e6
      rows.append((name, impl, us, f"rel err {err:.1e}"))
      print(f"{name:13s} {impl:7s} {us:8.1f} us/attention  rel err {err:.1e}", flush=True)
  print(f"\ndevice: {jax.devices()[0].device_kind}; {args.calls} attentions per call")
  print("| case | implementation | us per attention | note |\n|---|---|---|---|")
  for name, impl, us, note in rows:
    print(f"| {name} | {impl} | {us:.1f} | {note} |")


if __name__ == "__main__":
  main()
