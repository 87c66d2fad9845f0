"""Throughput of the frozen T5 text encoder (captions/s and MFU) with random weights.

  python benchmarks/text_encoder.py                          # T5-XXL, 128 tokens, all devices
  python benchmarks/text_encoder.py --size=tiny --steps=5    # CPU smoke run
  python benchmarks/text_encoder.py --mesh=1,4,2 --batch_size=512 --dtype=bfloat16
  python benchmarks/text_encoder.py --size=tiny --spiece_model=spiece.model  # + tokenizer rate

Times the jitted, sharded forward (`TextEncoder.encode_tokens`' compiled function) on
device-resident full-length batches, so the numbers are the device's; with --spiece_model
it also reports host tokenization captions/s. MFU = model FLOPs (matmuls incl. attention,
`T5Config.flops_per_sequence`) / (step time x devices x peak dense bf16 FLOP/s of the device
kind); pass --peak_tflops for devices not in the table (CPU shows n/a). Not a test: nothing
is asserted.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

from muse_jax.encoders.text_encoder import TextEncoder  # pylint: disable=g-import-not-at-top
from muse_jax.models import t5  # pylint: disable=g-import-not-at-top
from muse_jax.parallel.mesh import make_mesh  # pylint: disable=g-import-not-at-top
from muse_jax.training.flops import peak_flops_per_device  # pylint: disable=g-import-not-at-top


def _table(rows: list[tuple[str, str]]) -> str:
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _tokenizer_rate(spiece_model: str, length: int, num: int) -> float:
  from muse_jax.encoders.text_tokenizer import T5Tokenizer  # pylint: disable=g-import-not-at-top
  tok = T5Tokenizer(spiece_model, max_length=length)
  rng = np.random.default_rng(0)
  words = ["a", "red", "cube", "on", "top", "of", "the", "blue", "sphere", "photo", "dog",
           "painting", "in", "style", "with", "large", "small", "wooden", "table", "next"]
  texts = [" ".join(rng.choice(words, rng.integers(5, 40))) for _ in range(num)]
  tok(texts[:16])
  start = time.perf_counter()
  tok(texts)
  return num / (time.perf_counter() - start)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="xxl", choices=sorted(t5.CONFIGS),
                      help="T5 v1.1 size (tiny runs on CPU)")
  parser.add_argument("--length", type=int, default=128, help="tokens per caption")
  parser.add_argument("--batch_size", type=int, default=0,
                      help="global captions per step (0: 16 per batch shard)")
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                      help="compute dtype")
  parser.add_argument("--param_dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--mesh", default="1,-1,1",
                      help="data,fsdp,tensor sizes (one may be -1 = the remaining devices)")
  parser.add_argument("--attention", default="xla", choices=["xla", "cudnn"])
  parser.add_argument("--steps", type=int, default=10, help="timed steps")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="per-device peak TFLOP/s for MFU (default: by device kind)")
  parser.add_argument("--spiece_model", default="",
                      help="also time host tokenization with this sentencepiece model")
  args = parser.parse_args(argv)

  cfg = t5.get_config(args.size)
  sizes = [int(s) for s in args.mesh.split(",")]
  if len(sizes) != 3:
    parser.error("--mesh needs three sizes: data,fsdp,tensor")
  mesh = make_mesh(dict(zip(("data", "fsdp", "tensor"), sizes)))
  devices = mesh.devices.size

  start = time.perf_counter()
  encoder = TextEncoder(cfg, None, mesh=mesh, dtype=jnp.dtype(args.dtype),
                        param_dtype=jnp.dtype(args.param_dtype),
                        output_dtype=jnp.dtype(args.dtype), max_length=args.length,
                        attention=args.attention)
  jax.block_until_ready(encoder.params)
  init_s = time.perf_counter() - start

  batch = args.batch_size or 16 * encoder.batch_multiple
  if batch % encoder.batch_multiple:
    parser.error(f"--batch_size must be a multiple of {encoder.batch_multiple} on this mesh")
  rng = np.random.default_rng(0)
  ids = rng.integers(2, min(cfg.vocab_size, 32000), (batch, args.length)).astype(np.int32)
  ids[:, -1] = 1
  mask = np.ones_like(ids)
  ids = jax.make_array_from_process_local_data(encoder.batch_sharding, ids)
  mask = jax.make_array_from_process_local_data(encoder.batch_sharding, mask)

  forward = encoder._forward  # pylint: disable=protected-access  (the jitted step)
  start = time.perf_counter()
  compiled = forward.lower(encoder.params, ids, mask).compile()
  compile_s = time.perf_counter() - start
  for _ in range(args.warmup):
    jax.block_until_ready(compiled(encoder.params, ids, mask))
  start = time.perf_counter()
  out = None
  for _ in range(args.steps):
    out = compiled(encoder.params, ids, mask)
  jax.block_until_ready(out)
  step_s = (time.perf_counter() - start) / max(args.steps, 1)

  flops = cfg.flops_per_sequence(args.length) * batch
  achieved = flops / step_s / devices / 1e12
  peak = peak_flops_per_device(jax.devices()[0], args.peak_tflops) / 1e12
  mem = jax.devices()[0].memory_stats() or {}
  param_bytes = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(encoder.params))
  rows = [
      ("model", f"T5 v1.1 {args.size} encoder, {cfg.num_params() / 1e9:.3f}B params"),
      ("devices", f"{devices} x {jax.devices()[0].device_kind}"),
      ("mesh (data,fsdp,tensor)", ",".join(str(mesh.shape[a]) for a in mesh.axis_names)),
      ("batch x length", f"{batch} x {args.length}"),
      ("dtype / param_dtype", f"{args.dtype} / {args.param_dtype}"),
      ("params per device", f"{param_bytes / 2**30:.2f} GiB"),
      ("init / compile", f"{init_s:.1f} s / {compile_s:.1f} s"),
      ("peak memory per device",
       f"{mem['peak_bytes_in_use'] / 2**30:.1f} GiB" if "peak_bytes_in_use" in mem else "n/a"),
      ("step time", f"{step_s * 1e3:.2f} ms"),
      ("captions/s", f"{batch / step_s:,.1f}"),
      ("TFLOP/s per device", f"{achieved:.3f}"),
      ("MFU", f"{achieved / peak:.1%} (peak {peak:g} TFLOP/s)" if peak else "n/a (no peak "
       "for this device kind; pass --peak_tflops)"),
  ]
  if args.spiece_model:
    rows.append(("tokenizer captions/s (host)",
                 f"{_tokenizer_rate(args.spiece_model, args.length, 4096):,.0f}"))
  print(_table(rows))


if __name__ == "__main__":
  main()
