r"""muse_jax's aMUSEd-sized sampler against diffusers' aMUSEd pipeline, in one call.

  python benchmarks/peer_amused.py [--batches=1,16] [--runs=10]   # accelerator
  python benchmarks/peer_amused.py --tiny --runs=1                 # CPU smoke run

The peer is diffusers' `AmusedPipeline` at aMUSEd-256's sizes (`UVit2DModel`: hidden 1024, 22
layers, 16 heads, GEGLU 2816, 768-d CLIP states; `VQModel` of 146M), random weights in fp16,
12 steps with guidance, 256 px, eager PyTorch as diffusers runs it. Text states are random
tensors passed as `prompt_embeds` / `encoder_hidden_states` (and their negatives), so the CLIP
text encoder is not run; that matches the muse_jax rows, which exclude T5. Each side times
its transformer loop (diffusers: `output_type="latent"`; muse_jax: `benchmarks/sample.py`'s
`amused` and `amused_b16` rows, the VQ decode beside), and the peer's whole call with its VQ
decode is printed too. The peer runs in its own process (PyTorch beside JAX and TensorFlow in
one process has crashed), then `benchmarks/sample.py`, then the table with the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW_NAME = {1: "amused", 16: "amused_b16"}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--batches", default="1,16", help="comma-separated: 1 and/or 16")
  p.add_argument("--runs", type=int, default=10, help="timed calls per measurement")
  p.add_argument("--warmup", type=int, default=2, help="untimed calls first")
  p.add_argument("--guidance", type=float, default=4.0,
                 help="guidance scale of both sides (> 1: two rows per image, as CFG needs)")
  p.add_argument("--tiny", action="store_true", help="tiny models on the CPU (smoke run)")
  p.add_argument("--peer_only", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.batches = [int(b) for b in args.batches.split(",")]
  bad = [b for b in args.batches if b not in ROW_NAME]
  if bad:
    p.error(f"--batches: {bad} not among {sorted(ROW_NAME)}")
  return args


def _peer_pipeline(tiny: bool):
  import torch
  from diffusers import AmusedPipeline, AmusedScheduler, UVit2DModel, VQModel
  if tiny:
    transformer = UVit2DModel(hidden_size=32, cond_embed_dim=16, micro_cond_encode_dim=2,
                              micro_cond_embed_dim=10, encoder_hidden_size=16, vocab_size=32,
                              codebook_size=31, in_channels=16, block_out_channels=16,
                              num_res_blocks=1, block_num_heads=1, num_hidden_layers=1,
                              num_attention_heads=1, intermediate_size=32, sample_size=4)
    vqvae = VQModel(block_out_channels=[8, 16], layers_per_block=1, latent_channels=16,
                    num_vq_embeddings=31, norm_num_groups=8, lookup_from_codebook=True,
                    down_block_types=["DownEncoderBlock2D"] * 2,
                    up_block_types=["UpDecoderBlock2D"] * 2, mid_block_add_attention=False)
  else:
    transformer = UVit2DModel(sample_size=16)  # the defaults are aMUSEd's (256 px: 16x16)
    vqvae = VQModel(block_out_channels=[128, 256, 256, 512, 768], layers_per_block=2,
                    latent_channels=64, num_vq_embeddings=8192, norm_num_groups=32,
                    lookup_from_codebook=True, mid_block_add_attention=False,
                    force_upcast=False, down_block_types=["DownEncoderBlock2D"] * 5,
                    up_block_types=["UpDecoderBlock2D"] * 5)
  scheduler = AmusedScheduler(mask_token_id=transformer.config.vocab_size - 1)
  pipe = AmusedPipeline(vqvae=vqvae, tokenizer=None, text_encoder=None,
                        transformer=transformer, scheduler=scheduler)
  device, dtype = ("cuda", torch.float16) if torch.cuda.is_available() else ("cpu", torch.float32)
  pipe = pipe.to(device, dtype)
  pipe.set_progress_bar_config(disable=True)
  return pipe, transformer.config, device, dtype


def run_peer(args) -> dict:
  """Median seconds per call of the peer pipeline by batch: transformer loop and whole call."""
  import torch
  pipe, cfg, device, dtype = _peer_pipeline(args.tiny)
  n = sum(p.numel() for p in pipe.transformer.parameters())
  out = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
         "params": n, "rows": {}}
  for batch in args.batches:
    g = torch.Generator(device).manual_seed(0)

    def states(b):
      return dict(prompt_embeds=torch.randn(b, cfg.cond_embed_dim, generator=g, device=device,
                                            dtype=dtype),
                  encoder_hidden_states=torch.randn(b, 77, cfg.encoder_hidden_size, generator=g,
                                                    device=device, dtype=dtype))
    cond, uncond = states(batch), states(batch)
    kw = dict(cond, negative_prompt_embeds=uncond["prompt_embeds"],
              negative_encoder_hidden_states=uncond["encoder_hidden_states"],
              num_inference_steps=12, guidance_scale=args.guidance)
    row = {}
    for what, output_type in (("loop_s", "latent"), ("call_s", "np")):
      times = []
      for i in range(args.warmup + args.runs):
        if device == "cuda":
          torch.cuda.synchronize()
        t0 = time.perf_counter()
        pipe(output_type=output_type, generator=torch.Generator(device).manual_seed(i), **kw)
        if device == "cuda":
          torch.cuda.synchronize()
        if i >= args.warmup:
          times.append(time.perf_counter() - t0)
      row[what] = statistics.median(times)
    out["rows"][str(batch)] = row
    print(f"  diffusers aMUSEd batch {batch}: loop {1e3 * row['loop_s']:.1f} ms, "
          f"with VQ decode {1e3 * row['call_s']:.1f} ms", file=sys.stderr, flush=True)
  return out


def run_ours(args) -> dict[int, float]:
  """benchmarks/sample.py's aMUSEd rows: median seconds of the transformer loop by batch."""
  rows = ",".join(ROW_NAME[b] for b in args.batches)
  cmd = [sys.executable, os.path.join(REPO, "benchmarks", "sample.py"), f"--rows={rows}",
         f"--runs={args.runs}", f"--warmup={args.warmup}", f"--guidance={args.guidance}"]
  cmd += ["--tiny"] if args.tiny else []
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  sys.stderr.write(proc.stdout)
  if proc.returncode:
    sys.stderr.write(proc.stderr[-3000:])
    raise SystemExit(f"benchmarks/sample.py failed with exit status {proc.returncode}")
  found = {}
  for b in args.batches:
    m = re.search(rf"^  {ROW_NAME[b]}: latency ([0-9.]+) ms", proc.stdout, re.M)
    if not m:
      raise SystemExit(f"benchmarks/sample.py printed no latency for row {ROW_NAME[b]}")
    found[b] = float(m.group(1)) / 1e3
  return found


def main(argv=None):
  args = parse_args(argv)
  if args.peer_only:
    print(json.dumps(run_peer(args)))
    return
  flags = [f"--batches={','.join(map(str, args.batches))}", f"--runs={args.runs}",
           f"--warmup={args.warmup}", f"--guidance={args.guidance}"]
  flags += ["--tiny"] if args.tiny else []
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--peer_only", *flags],
                        cwd=REPO, capture_output=True, text=True)
  sys.stderr.write(proc.stderr[-3000:] if proc.returncode else proc.stderr)
  if proc.returncode:
    raise SystemExit(f"the diffusers peer failed with exit status {proc.returncode}")
  peer = json.loads(proc.stdout.strip().splitlines()[-1])
  ours = run_ours(args)
  print(f"\npeer device: {peer['device']}; peer transformer {peer['params'] / 1e6:.1f}M "
        f"parameters; 12 steps, guidance {args.guidance}, median of {args.runs}")
  print("| batch | muse_jax loop | diffusers loop | diffusers with VQ decode | loop ratio |")
  print("|---|---|---|---|---|")
  for b in args.batches:
    p = peer["rows"][str(b)]
    print(f"| {b} | {1e3 * ours[b]:.1f} ms | {1e3 * p['loop_s']:.1f} ms | "
          f"{1e3 * p['call_s']:.1f} ms | {p['loop_s'] / ours[b]:.1f}x |")


if __name__ == "__main__":
  main()
