r"""Sampling latency and images/s of the Muse cascade, with random weights.

  python benchmarks/sample.py                 # all rows (accelerator; compiles take minutes)
  python benchmarks/sample.py --rows=amused   # the aMUSEd-size row only
  python benchmarks/sample.py --tiny          # tiny models: a CPU smoke run in seconds

Rows (classifier-free guidance on: every step is ONE forward on 2B rows, cond + uncond;
--sr_guidance=0 samples the SR stage without it, one forward on B rows per step):
  base256_b{1,16}     base_632m, 16x16 tokens, 24 steps, then f16 VQ decode to 256 px
  cascade512_b{1,16}  base_632m 24 steps -> sr_268m 8 steps (64x64) -> f8 VQ decode to 512 px
  amused, amused_b16  aMUSEd's size (hidden 1024, 35 layers, 16 heads, MLP 4096, 768-d text
                      padded to 128), 256 tokens, 12 steps, batch 1 / 16; latency = the
                      transformer loop; its VQ decoder (146M, 256 px) is beside it.
Text embeddings are random and made once (T5 is not timed: it runs once per prompt; see
benchmarks/text_encoder.py). What is timed is exactly the sampler the CLI runs
(`muse_jax.sampling.stage_fns.sample_stage`): the text context (and the SR low-res encoder) is
computed once per image, then `parallel_decode.decode` loops over the steps, all in one jit
with the VQ decode; parameters bf16 (cast once; `--fp8`: e4m3 post-norm projections),
attention `--attention` (pallas: up to 1024 tokens, cuDNN beyond), layers unrolled (`--scan`).

Reported per row: compile time, latency (median of --runs after --warmup, each ended by
block_until_ready), images/s, the VQ decode alone, one guided forward of the transformer
(2B rows; `steps` forwards timed in one jitted loop set up as the sampler's, each step's argmax
feeding the next, divided by `steps`) and the sampler overhead = loop - steps x forward (the
noise, top-k, sort and remasking between forwards), and two floors of the loop: compute
(model FLOPs / peak bf16 FLOP/s) and weights (steps x weight bytes / HBM bandwidth). `limit`
names the largest share: compute, weights (HBM), forward above floors (inefficient small
kernels or launch gaps) or the sampler (top-k/sort/noise between forwards). With --profile, a
"forward above floors" limit also names the profile's largest share of the call: small
matmuls, attention, elementwise kernels, copies or kernel launches (idle gaps). Table last.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import sys
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.sample_report import attribute, fmt_ms, print_table  # noqa: E402

# HBM bandwidth in bytes/s by device_kind substring (datasheet values).
HBM_BYTES_PER_S = (
    ("H200", 4.8e12), ("H100", 3.35e12), ("B200", 8.0e12), ("A100", 2.0e12), ("L4", 0.3e12),
    ("TPU v6", 1.64e12), ("TPU v5p", 2.76e12), ("TPU v5 lite", 0.82e12), ("TPU v5e", 0.82e12),
    ("TPU v4", 1.2e12))

ROWS = ("base256_b1", "base256_b16", "cascade512_b1", "cascade512_b16", "amused", "amused_b16")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--rows", default=",".join(ROWS),
                 help=f"comma-separated rows to run, from {','.join(ROWS)}")
  p.add_argument("--tiny", action="store_true", help="tiny models (CPU smoke run)")
  p.add_argument("--runs", type=int, default=10, help="timed runs per measurement")
  p.add_argument("--warmup", type=int, default=2, help="untimed runs after compiling")
  p.add_argument("--attention", default="pallas", choices=("auto", "cudnn", "xla", "pallas"))
  p.add_argument("--scan", action="store_true", help="scan over layers instead of unrolling")
  p.add_argument("--fp8", action="store_true",
                 help="model.fp8_matmuls: e4m3 post-norm projections (muse_jax/models/fp8.py)")
  p.add_argument("--guidance", type=float, default=4.0, help="CFG scale t (0 = no CFG)")
  p.add_argument("--sr_guidance", type=float, default=None,
                 help="the SR stage's CFG scale (default: --guidance; 0 = one forward of B "
                      "rows per SR step instead of 2B)")
  p.add_argument("--rng", default="threefry2x32", choices=("threefry2x32", "rbg", "unsafe_rbg"),
                 help="PRNG implementation of the sampling keys")
  p.add_argument("--param_dtype", default="bfloat16", choices=("bfloat16", "float32"))
  p.add_argument("--unroll_loop", action="store_true",
                 help="unroll the decoding step loop (sampling.unroll_loop)")
  p.add_argument("--xla_option", action="append", default=[], metavar="NAME=VALUE",
                 help="extra XLA compiler option of the timed jits (repeatable), on top of "
                      "muse_jax.sampling.stage_fns.sampler_compiler_options(); e.g. "
                      "xla_gpu_enable_triton_gemm=true")
  p.add_argument("--profile", default="",
                 help="trace dir: also profile 3 calls of each row's sampler, print its "
                      "kernel count, summed kernel time and the idle gap per call, and name "
                      "the largest share in the limit column")
  return p.parse_args(argv)


@dataclasses.dataclass
class RowSpec:
  name: str
  batch: int
  base: object                 # base training config (model section used)
  base_steps: int
  sr: Optional[object] = None  # sr training config
  sr_steps: int = 0
  vq: Optional[object] = None  # vqgan `model` ConfigDict of the last stage's tokenizer
  vq_in_latency: bool = True   # False: the VQ decode is reported beside, not in, the latency


def _model_overrides(cfg, args, tiny):
  with cfg.unlocked():
    cfg.model.param_dtype = args.param_dtype
    cfg.model.scan_layers = bool(args.scan)
    cfg.model.fp8_matmuls = bool(args.fp8)
    if not tiny:
      cfg.model.update(dict(dtype="bfloat16", attention=args.attention))
  return cfg


def amused_size_config(tiny: bool):
  """aMUSEd's width and parameter count as a Muse base transformer (see module docstring)."""
  from configs import tiny as tiny_cfg
  from muse_jax.configs import common
  if tiny:
    c = tiny_cfg.get_config()
    c.model.update(dict(num_layers=3, text_dim=16))
    return c
  c = common.get_config("base")
  c.model.update(dict(grid_size=16, codebook_size=8192, hidden_size=1024, num_layers=35,
                      num_heads=16, head_dim=64, mlp_dim=4096, text_dim=768, text_length=128))
  return c


def row_specs(args):
  from configs import base_632m, sr_268m, sr_tiny, tiny as tiny_cfg
  from muse_jax.configs import common_vqgan
  if args.tiny:
    base = tiny_cfg.get_config()
    sr = sr_tiny.get_config()
    sr.model.update(dict(lowres_grid_size=4, grid_size=8))
    vq_lo = vq_hi = common_vqgan.vqgan_model("tiny")
    vq_amused = common_vqgan.vqgan_model("tiny")
  else:
    base, sr = base_632m.get_config(), sr_268m.get_config()
    vq_lo, vq_hi = common_vqgan.vqgan_model("f16"), common_vqgan.vqgan_model("f8")
    vq_amused = common_vqgan.vqgan_model("amused")
  for cfg in (base, sr):
    _model_overrides(cfg, args, args.tiny)
  amused = _model_overrides(amused_size_config(args.tiny), args, args.tiny)
  for vq in (vq_lo, vq_hi, vq_amused):
    vq.param_dtype = args.param_dtype
    if not args.tiny:
      vq.dtype = "bfloat16"
  specs = {
      "base256_b1": RowSpec("base256_b1", 1, base, 24, vq=vq_lo),
      "base256_b16": RowSpec("base256_b16", 16, base, 24, vq=vq_lo),
      "cascade512_b1": RowSpec("cascade512_b1", 1, base, 24, sr, 8, vq=vq_hi),
      "cascade512_b16": RowSpec("cascade512_b16", 16, base, 24, sr, 8, vq=vq_hi),
      "amused": RowSpec("amused", 1, amused, 12, vq=vq_amused, vq_in_latency=False),
      "amused_b16": RowSpec("amused_b16", 16, amused, 12, vq=vq_amused, vq_in_latency=False),
  }
  names = [r.strip() for r in args.rows.split(",") if r.strip()]
  unknown = [n for n in names if n not in specs]
  if unknown:
    raise SystemExit(f"unknown rows {unknown}; choose from {','.join(ROWS)}")
  return [specs[n] for n in names]


# --------------------------------------------------------------------------------------------


def compiler_options(args) -> dict:
  """The sampler's own XLA options (as the CLI compiles it) plus --xla_option NAME=VALUE."""
  from muse_jax.sampling.stage_fns import sampler_compiler_options
  opts = sampler_compiler_options()
  for item in args.xla_option:
    name, sep, value = item.partition("=")
    if not sep:
      raise SystemExit(f"--xla_option {item!r}: use NAME=VALUE")
    low = value.lower()
    opts[name] = (low == "true" if low in ("true", "false") else
                  int(value) if value.lstrip("-").isdigit() else value)
  return opts


def timed(fn, *args, runs: int, warmup: int):
  """(compile seconds, median seconds per call, compiled fn) of a jitted fn on fixed inputs."""
  import jax
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return compile_s, statistics.median(times), compiled


def profile_calls(compiled, args, trace_dir: str, latency_s: float, calls: int = 3,
                  top: int = 40):
  """Prints kernels per call, their summed time, the rest of the latency (idle gaps) and the
  `top` kernels by time (ms per call, launches per call, us per launch); returns the latency,
  the summed kernel time and the time per kernel category (ms per call). The optimized HLO is
  written beside the trace (TRACE_DIR/optimized_hlo.txt) to look up what each fusion holds."""
  import jax
  from benchmarks.trace_summary import category, kernel_times
  os.makedirs(trace_dir, exist_ok=True)
  with open(os.path.join(trace_dir, "optimized_hlo.txt"), "w") as f:
    f.write(compiled.as_text())
  with jax.profiler.trace(trace_dir):
    for _ in range(calls):
      jax.block_until_ready(compiled(*args))
  by_cat, by_name, count = kernel_times(trace_dir, calls)
  n = sum(count.values())
  busy_ms = sum(by_cat.values()) / 1e3
  print(f"    profile: {n / calls:.0f} kernels/call, kernel time {busy_ms:.1f} ms of "
        f"{1e3 * latency_s:.1f} ms latency (idle/launch gaps {1e3 * latency_s - busy_ms:.1f} "
        "ms); " + ", ".join(f"{c} {d / 1e3:.1f}" for c, d in by_cat.most_common()), flush=True)
  for name, dur in by_name.most_common(top):
    per_call = count[name] // calls
    print(f"      {dur / 1e3:7.3f} ms {per_call:5d}x {dur / max(per_call, 1):6.1f}"
          f" us  [{category(name)}] {name[:90]}", flush=True)
  return dict(latency_ms=1e3 * latency_s, busy_ms=busy_ms,
              by_category_ms={c: d / 1e3 for c, d in by_cat.items()})


def n_params(tree) -> int:
  import jax
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def device_rates(device):
  from muse_jax.training.flops import peak_flops_per_device
  kind = getattr(device, "device_kind", "")
  bw = next((b for name, b in HBM_BYTES_PER_S if name.lower() in kind.lower()), 0.0)
  return peak_flops_per_device(device), bw


def sr_guidance(args) -> float:
  return args.guidance if args.sr_guidance is None else args.sr_guidance


def forward_flops(cfg, sr: bool) -> float:
  """Model FLOPs of one forward of one example in the sampling loop (context excluded)."""
  from muse_jax.training.flops import block_forward_flops
  m = cfg.model
  t = m.grid_size ** 2
  kv = m.text_length + (m.lowres_grid_size ** 2 if sr else 0)
  return m.num_layers * block_forward_flops(m, t, kv) + 2 * t * m.hidden_size * m.codebook_size


def loop_bytes(params, sr: bool) -> int:
  """Bytes of the parameters every decoding step reads (not the text projection / low-res
  encoder)."""
  import jax
  skip = ("text_proj", "lowres_embed", "lowres_pos_embed", "lowres_stack", "lowres_norm")
  return int(sum(x.size * x.dtype.itemsize for k, v in params.items() if k not in skip
                 for x in jax.tree.leaves(v)))


def run_row(spec: RowSpec, args):
  import jax
  import jax.numpy as jnp
  from muse_jax.models import vqgan as V
  from muse_jax.models.functional import functionalize
  from muse_jax.models.superres import SuperResTransformer
  from muse_jax.models.transformer import MaskedTransformer
  from muse_jax.models.vqgan import from_model_range
  from muse_jax.sampling import parallel_decode
  from muse_jax.sampling.loading import sampling_stage
  from muse_jax.sampling.stage_fns import sample_stage
  from muse_jax.workdir.saved_config import stored_config

  b = spec.batch
  xla_opts = compiler_options(args)
  key = jax.random.key(0, impl=args.rng)
  k_init, k_text = jax.random.split(jax.random.key(0))

  def init(config, k):  # random trained-layout params, then the pipeline's sampling layout
    cls = MaskedTransformer if config.stage == "base" else SuperResTransformer
    _, init_fn = functionalize(lambda r: cls(stored_config(config).model, rngs=r))
    loaded = sampling_stage(config.stage, config, jax.jit(init_fn)(k))
    return loaded.model_def, loaded.params

  base_def, base_params = init(spec.base, jax.random.fold_in(k_init, 0))
  bm = spec.base.model
  opts = dict(schedule="cosine", guidance_scale=args.guidance, guidance_schedule="linear",
              temperature=1.0, choice_temperature=parallel_decode.DEFAULT_CHOICE_TEMPERATURE,
              unroll=args.unroll_loop)
  base_opts = dict(opts, num_steps=spec.base_steps)
  sr_def = sr_params = None
  if spec.sr is not None:
    sr_def, sr_params = init(spec.sr, jax.random.fold_in(k_init, 1))
  vq_cfg = V.VQGANConfig.from_config(spec.vq)
  vq_def, vq_init = functionalize(lambda r: V.VQGAN(vq_cfg, rngs=r))
  vq_params = jax.jit(vq_init)(jax.random.fold_in(k_init, 2))

  text_dtype = jnp.bfloat16 if bm.dtype == "bfloat16" else jnp.float32
  text = jax.random.normal(k_text, (b, bm.text_length, bm.text_dim), text_dtype)
  text_len = jnp.full((b,), min(20, bm.text_length), jnp.int32)
  utext = jnp.zeros_like(text)
  ulen = jnp.zeros((b,), jnp.int32)
  t_lo = bm.grid_size ** 2
  lo_start = jnp.full((b, t_lo), int(bm.codebook_size), jnp.int32)
  lo_mask = jnp.ones((b, t_lo), bool)
  base_fn = functools.partial(sample_stage, base_def, "base", "decode", base_opts,
                              int(bm.codebook_size))
  if spec.sr is not None:
    sm = spec.sr.model
    t_hi = sm.grid_size ** 2
    hi_start = jnp.full((b, t_hi), int(sm.codebook_size), jnp.int32)
    hi_mask = jnp.ones((b, t_hi), bool)
    sr_fn = functools.partial(sample_stage, sr_def, "sr", "decode",
                              dict(opts, num_steps=spec.sr_steps,
                                   guidance_scale=sr_guidance(args)), int(sm.codebook_size))
    last_grid = sm.grid_size
  else:
    last_grid = bm.grid_size

  def vq_decode(pv, ids):
    model = vq_def.bind(pv)
    img = from_model_range(model.decode(ids.reshape(ids.shape[0], last_grid, last_grid)),
                           vq_cfg.pixel_range)
    return jnp.clip(img, 0.0, 1.0)

  def tokens_only(pb, ps, text, text_len, utext, ulen, key):
    k_lo, k_hi = jax.random.split(key)
    lo = base_fn(pb, lo_start, lo_mask, text, text_len, utext, ulen, k_lo, None)
    if spec.sr is None:
      return lo
    return sr_fn(ps, hi_start, hi_mask, text, text_len, utext, ulen, k_hi, lo)

  def full(pb, ps, pv, text, text_len, utext, ulen, key):
    return vq_decode(pv, tokens_only(pb, ps, text, text_len, utext, ulen, key))

  row = dict(name=spec.name, batch=b,
             size=last_grid * vq_cfg.downsample_factor,
             params=n_params(base_params) + (n_params(sr_params) if sr_params else 0))
  inputs = (base_params, sr_params, text, text_len, utext, ulen, key)
  if spec.vq_in_latency:
    c_s, lat, compiled = timed(jax.jit(full, compiler_options=xla_opts), base_params,
                               sr_params, vq_params, *inputs[2:],
                               runs=args.runs, warmup=args.warmup)
  else:
    c_s, lat, compiled = timed(jax.jit(tokens_only, compiler_options=xla_opts), *inputs,
                               runs=args.runs,
                               warmup=args.warmup)
  # The VQ decoder's time does not depend on the ids: random ones avoid a second loop compile.
  last_cb = int((spec.sr or spec.base).model.codebook_size)
  ids = jax.random.randint(k_text, (b, last_grid ** 2), 0, last_cb, jnp.int32)
  _, vq_s, _ = timed(jax.jit(vq_decode, compiler_options=xla_opts), vq_params, ids,
                     runs=args.runs, warmup=args.warmup)
  row.update(compile_s=c_s, latency_s=lat, vq_s=vq_s, images_per_s=b / lat)
  if args.profile:
    profiled = (inputs if not spec.vq_in_latency
                else (base_params, sr_params, vq_params) + inputs[2:])
    row["profile"] = profile_calls(compiled, profiled, os.path.join(args.profile, spec.name),
                                   lat)

  # The guided forwards (2B rows) of the stage that dominates, without the sampling between.
  fwd_def, fwd_params, fwd_cfg, is_sr = ((sr_def, sr_params, spec.sr, True)
                                         if spec.sr is not None else
                                         (base_def, base_params, spec.base, False))
  m = fwd_cfg.model
  use_cfg = (sr_guidance(args) if is_sr else args.guidance) != 0
  rows = 2 * b if use_cfg else b
  steps = spec.sr_steps if is_sr else spec.base_steps

  def forward_loop(p, t, tl, lo, tokens):
    """`steps` forwards in one loop, set up as the sampler's: context, text keys/values and
    per-layer weights once, before it. Each step's argmax is the next step's input, so XLA
    cannot hoist a forward out of the loop."""
    model = fwd_def.bind(p)
    c, c_len = model.encode_context(lo, t, tl) if is_sr else model.encode_context(t, tl)
    cache, layers = model.stack.cross_cache(c), model.stack.layer_params()

    def step(_, tok):
      logits = model.decode(tok, c, c_len, cache=cache, layers=layers)
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return jax.lax.fori_loop(0, steps, step, tokens)

  tokens = jnp.full((rows, m.grid_size ** 2), 3, jnp.int32)
  rtext = jnp.concatenate([text] * (rows // b))
  rlen = jnp.concatenate([text_len] * (rows // b))
  tokens_lo = (jnp.zeros((rows, m.lowres_grid_size ** 2), jnp.int32) if is_sr else None)
  _, fwd_loop_s, _ = timed(jax.jit(forward_loop, compiler_options=xla_opts), fwd_params, rtext,
                           rlen, tokens_lo, tokens, runs=args.runs, warmup=args.warmup)
  fwd_s = fwd_loop_s / steps
  loop_s = lat - (vq_s if spec.vq_in_latency else 0.0)
  flops_step = forward_flops(fwd_cfg, is_sr) * rows
  peak, bw = device_rates(jax.devices()[0])
  row.update(forward_s=fwd_s, steps=steps, loop_s=loop_s,
             compute_floor_s=(flops_step / peak) if peak else None,
             weight_floor_s=(loop_bytes(fwd_params, is_sr) / bw) if bw else None)
  attribute(row, base_loop_s=0.0)
  return row


def main(argv=None):
  args = parse_args(argv)
  import jax
  specs = row_specs(args)
  device = f"{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()})"
  print(f"device: {device}; attention={args.attention} scan={args.scan} "
        f"param_dtype={args.param_dtype} fp8={args.fp8} guidance={args.guidance} "
        f"sr_guidance={sr_guidance(args)} "
        f"rng={args.rng} xla options={compiler_options(args)}", flush=True)
  rows, base_loops = [], {}
  for spec in specs:
    t0 = time.perf_counter()
    row = run_row(spec, args)
    if spec.sr is None and spec.name.startswith("base"):
      base_loops[spec.batch] = row["loop_s"]
    else:
      if spec.sr is not None:
        attribute(row, base_loops.get(spec.batch))
    rows.append(row)
    # Everything the table will hold, as soon as the row is done (a run cut short keeps it).
    print(f"  {spec.name}: latency {fmt_ms(row['latency_s'])} ms, "
          f"{row['images_per_s']:.2f} img/s, {row['steps']} x forward "
          f"{fmt_ms(row['forward_s'])} ms, limit {row['limit']} "
          f"({time.perf_counter() - t0:.0f} s incl. compile)", flush=True)
  print_table(rows, device)


if __name__ == "__main__":
  main()
