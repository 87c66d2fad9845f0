r"""Attention kernels at the samplers' and trainers' shapes: cuDNN, XLA and the Pallas kernels
(muse_jax/models/pallas_attention.py), per call, and their error against a float32 reference.

  python benchmarks/attention.py [--cases=amused_self,amused_cross] [--calls=35]
  python benchmarks/attention.py --grad --cases=base_self,base_cross --calls=16
  python benchmarks/attention.py --grad --cases=base_self --impls=pallas \
      --forward_blocks=64,128,4,2/128,64,8,3 --dkdv_blocks=64,128,4

Cases (batch = 2 x images: CFG's cond + uncond rows):
  amused_self    B=2,  T=256,  16 heads x 64, from the fused qkv projection (aMUSEd-size row)
  amused_cross   B=2,  T=256 -> S=128 text keys, half the rows masked at length 77
  b16_self       B=32, T=256,  16 heads x 64 (base256_b16 row)
  sr_self        B=2,  T=4096, 16 heads x 64 (sr_268m's 64x64 tokens)
  sr_cross       B=2,  T=4096 -> S=512 (low-res 256 + text 128, padded), masked at 300
Training cases (base_632m at batch 64, sr_268m at batch 8; use them with --grad):
  base_self      B=64, T=256,  12 heads x 128, from the fused qkv projection
  base_cross     B=64, T=256 -> S=128 text keys, half the rows masked at length 77
  srt_self       B=8,  T=4096, 4 heads x 128, from the fused qkv projection
  srt_cross      B=8,  T=4096 -> S=384 (low-res 256 + text 128), half masked at 333
  srt_lowres     B=8,  T=256,  4 heads x 128, from the fused qkv projection (low-res encoder)
--grad times the forward and backward together (the gradient of sum(out * cotangent) with
respect to q, k, v or the fused qkv) and reports the error of that gradient.
`tokamax_triton` and `tokamax_mosaic` in --impls run tokamax's kernels (pip install tokamax).
`mgpu` runs JAX's Hopper kernel (jax.experimental.pallas.ops.gpu.attention_mgpu: warpgroup
matmuls and TMA loads), which takes no key lengths and no scale, and whose shared-memory
buffers are float16 whatever its inputs: it runs on the unmasked cases only, on q (scaled by
1/sqrt(head_dim)), k and v cast to float16, and its output cast back, the casts timed with
it. --mgpu_blocks sets its blocks.
--forward_blocks, --dq_blocks and --dkdv_blocks set the block sizes, warps and pipeline stages
of the Pallas forward kernel and the backward's two kernels. Several settings, separated by
"/", sweep them in one process: `pallas` runs once per combination, labelled with its settings.
Each implementation runs `--calls` attentions in one jit, each on its own input (as the layers
of one decoding step), with the samplers' compiler options (forward only); reported: the
median of 20 calls' wall time divided by `--calls` (us per attention, launch gaps included).
For cuDNN and XLA with a fused qkv, the split of q, k, v out of it is part of the timed work,
as in the model.
"""
import argparse
import itertools
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
    base_self=(64, 256, 256, 12, 128, None, True),
    base_cross=(64, 256, 128, 12, 128, 77, False),
    srt_self=(8, 4096, 4096, 4, 128, None, True),
    srt_cross=(8, 4096, 384, 4, 128, 333, False),
    srt_lowres=(8, 256, 256, 4, 128, None, True),
)
SAMPLER_CASES = "amused_self,amused_cross,b16_self,sr_self,sr_cross"


def blocks_arg(text):
  """'BQ,BK,WARPS[,STAGES]' settings separated by '/' -> a list of 4-tuples (stages 2 if left
  out)."""
  settings = []
  for one in text.split("/"):
    try:
      values = tuple(int(v) for v in one.split(","))
    except ValueError:
      values = ()
    if len(values) not in (3, 4) or min(values) < 1:
      raise argparse.ArgumentTypeError(
          f"{one!r}: give block_q,block_k,num_warps[,num_stages], e.g. 64,64,4 or 64,64,4,3")
    settings.append(values + (2,) * (4 - len(values)))
  return settings


def mgpu_arg(text):
  """'BQ,BK,STEPS,BQ_DKV,BK_DKV,BQ_DQ,BK_DQ' settings separated by '/' -> a list of 7-tuples."""
  settings = [tuple(int(v) for v in part.split(",")) for part in text.split("/")]
  if any(len(one) != 7 for one in settings):
    raise argparse.ArgumentTypeError(f"{text!r}: each setting is 7 integers")
  return settings


def pallas_settings(forward, dq, dkdv):
  """(label, {kernel: setting or None}) for each combination of the swept settings; None
  keeps the kernel's default."""
  names = ("forward", "dq", "dkdv")
  out = []
  for combo in itertools.product(forward or [None], dq or [None], dkdv or [None]):
    label = " ".join(f"{n}={','.join(map(str, c))}" for n, c in zip(names, combo) if c)
    out.append(("pallas" + (f" {label}" if label else ""), dict(zip(names, combo))))
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--cases", default=SAMPLER_CASES, help=f"from {','.join(CASES)}")
  p.add_argument("--calls", type=int, default=35, help="attentions per jitted call")
  p.add_argument("--impls", default="cudnn,xla,pallas",
                 help="from cudnn, xla, pallas, mgpu, tokamax_triton, tokamax_mosaic")
  p.add_argument("--mgpu_blocks", type=mgpu_arg, default=[(64, 128, 2, 64, 64, 64, 64)],
                 metavar="BQ,BK,STEPS,BQ_DKV,BK_DKV,BQ_DQ,BK_DQ[/...]",
                 help="mgpu's forward block_q, block_kv and max_concurrent_steps, then the "
                      "backward's blocks (dk/dv kernel, dq kernel); '/' sweeps settings")
  p.add_argument("--grad", action="store_true", help="time forward + backward")
  for name, where in (("forward", ""), ("dq", "_grad"), ("dkdv", "_grad")):
    p.add_argument(f"--{name}_blocks", type=blocks_arg, default=None,
                   metavar="BQ,BK,WARPS[,STAGES][/...]",
                   help=f"the Pallas {name} kernel: block_q, block_k, num_warps and num_stages "
                        f"(2 if left out; default: {name.upper()}_BLOCKS in "
                        f"muse_jax/models/pallas_attention{where}.py)")
  args = p.parse_args(argv)
  import jax
  import jax.numpy as jnp
  from muse_jax.models import layers as L
  from muse_jax.models import pallas_attention as PA
  from muse_jax.models import pallas_attention_grad as PG
  defaults = dict(forward=PA.FORWARD_BLOCKS, dq=PG.DQ_BLOCKS, dkdv=PG.DKDV_BLOCKS)
  sweep = pallas_settings(args.forward_blocks, args.dq_blocks, args.dkdv_blocks)

  def use(settings):  # the kernels read these when they are traced
    PA.FORWARD_BLOCKS, PG.DQ_BLOCKS, PG.DKDV_BLOCKS = (
        settings[k] or defaults[k] for k in ("forward", "dq", "dkdv"))
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

    def one(impl, x, settings=None):
      if impl == "mgpu":
        from jax.experimental.pallas.ops.gpu import attention_mgpu as MG
        bq, bk, steps, bq_dkv, bk_dkv, bq_dq, bk_dq = settings
        cfg = MG.TuningConfig(block_q=bq, block_kv=bk, max_concurrent_steps=steps,
                              block_q_dkv=bq_dkv, block_kv_dkv=bk_dkv, block_q_dq=bq_dq,
                              block_kv_dq=bk_dq)
        q, k, v = split(x)
        f16 = jnp.float16
        out = MG.attention((q * h ** -0.5).astype(f16), k.astype(f16), v.astype(f16), cfg)
        return out.astype(q.dtype)
      if impl == "pallas":
        return PA.qkv_attention(x) if fused else PA.attention(*x, lens)
      if impl.startswith("tokamax_"):
        import tokamax
        return tokamax.dot_product_attention(*split(x), key_value_seq_lengths=lens,
                                             implementation=impl[len("tokamax_"):])
      return L.attention(*split(x), kv_lengths=lens, implementation=impl)

    ct = jax.random.normal(jax.random.fold_in(key, 999), (b, t, n, h), jnp.float32)

    def grad_of(f):  # d sum(f(x) * ct) / dx, x the fused qkv or the (q, k, v) tuple
      return jax.grad(lambda x: jnp.sum(f(x).astype(jnp.float32) * ct))

    def ref_fn(x):
      return L.attention(*(a.astype(jnp.float32) for a in split(x)), kv_lengths=lens)

    ref = grad_of(ref_fn)(xs[0]) if args.grad else ref_fn(xs[0])
    runs = []  # (impl, label, Pallas settings or None)
    for impl in [i.strip() for i in args.impls.split(",")]:
      if impl == "pallas":
        runs += [(impl, *s) for s in sweep]
      elif impl == "mgpu":
        runs += [(impl, "mgpu " + ",".join(map(str, s)), s) for s in args.mgpu_blocks
                 if length is None]
      else:
        runs.append((impl, impl, None))
    for impl, label, settings in runs:
      if impl != "xla" and not on_gpu:
        continue
      if impl == "pallas":
        use(settings)

      def per(x, impl=impl, settings=settings):
        return one(impl, x, settings)
      if args.grad:
        per = grad_of(per)
      opts = None if args.grad else sampler_compiler_options()
      fn = jax.jit(lambda xs, per=per: [per(x) for x in xs], compiler_options=opts)
      try:
        outs = jax.block_until_ready(fn(xs))
      except Exception as e:  # noqa: BLE001 - report and go on
        rows.append((name, label, float("nan"), f"{type(e).__name__}: {str(e)[:80]}"))
        continue
      got, want = jax.tree.leaves(outs[0]), jax.tree.leaves(ref)
      err = max(float(jnp.linalg.norm(g.astype(jnp.float32) - w) / jnp.linalg.norm(w))
                for g, w in zip(got, want))
      times = []
      for _ in range(20):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(xs))
        times.append(time.perf_counter() - t0)
      us = statistics.median(times) / args.calls * 1e6
      rows.append((name, label, us, f"rel err {err:.1e}"))
      print(f"{name:13s} {label:7s} {us:8.1f} us/attention  rel err {err:.1e}", flush=True)
  what = "forward + backward" if args.grad else "forward"
  print(f"\ndevice: {jax.devices()[0].device_kind}; {args.calls} attentions ({what}) per call")
  print("| case | implementation | us per attention | note |\n|---|---|---|---|")
  for name, impl, us, note in rows:
    print(f"| {name} | {impl} | {us:.1f} | {note} |")


if __name__ == "__main__":
  main()
