"""Tokenizer throughput: encode and decode images/s at 256 and 512 px, and train-step time.

  python benchmarks/vq_tokenizer.py                      # f16 at 256, f8 at 512 (accelerator)
  python benchmarks/vq_tokenizer.py --tiny --batch=8     # seconds on CPU
  python benchmarks/vq_tokenizer.py --config=amused --batch=16

Prints one table row per (config, resolution): encode and decode images/s (jitted, batch
sharded over all devices, after a warm-up call) and, with --train, the mean vqgan train-step
time (generator + discriminator, GAN active, perceptual loss with random VGG weights).
Weights are random: speed does not depend on them.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from muse_jax.configs import common_vqgan  # noqa: E402
from muse_jax.encoders.vq_tokenizer import VQTokenizer  # noqa: E402
from muse_jax.models import vqgan as V  # noqa: E402

SETUPS = {  # name -> [(model kind, resolution)]
    "muse": [("f16", 256), ("f8", 512)],
    "amused": [("amused", 256), ("amused", 512)],
    "tiny": [("tiny", 32), ("tiny", 64)],
}


def _time(fn, repeats):
  out = fn()
  jax.block_until_ready(out)
  t = time.perf_counter()
  for _ in range(repeats):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / repeats


def _random_params(fm, seed=0):
  rng = np.random.default_rng(seed)

  def one(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "scale":
      return np.ones(leaf.shape, np.float32)
    if name == "bias":
      return np.zeros(leaf.shape, np.float32)
    fan_in = int(np.prod(leaf.shape[:-1])) if name == "kernel" else leaf.shape[-1]
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(one, fm.abstract_params())


def bench_api(kind, size, batch, dtype, repeats):
  cfg = V.VQGANConfig.from_config(common_vqgan.vqgan_model(kind, dtype=dtype))
  from muse_jax.models.functional import functionalize
  fm, _ = functionalize(lambda r: V.VQGAN(cfg, rngs=r))
  tok = VQTokenizer(cfg, _random_params(fm))
  images = np.random.default_rng(0).uniform(0, 1, (batch, size, size, 3)).astype(np.float32)
  images = jax.device_put(images, tok._batch)
  t_enc = _time(lambda: tok.encode(images), repeats)
  ids = tok.encode(images)
  t_dec = _time(lambda: tok.decode(ids), repeats)
  return cfg, batch / t_enc, batch / t_dec, ids.shape[1]


def bench_train(kind, size, batch, dtype, steps):
  from safetensors.numpy import save_file

  from muse_jax.training.loop import Trainer
  from muse_jax.weights.vgg_lpips import random_torch_state
  c = common_vqgan.get_config()
  c.model = common_vqgan.vqgan_model(kind, dtype=dtype)
  tiny = kind == "tiny"
  c.discriminator = common_vqgan.discriminator(
      size, dtype=dtype, **(dict(base_channels=8, channel_multipliers=(2, 2), max_channels=16)
                            if tiny else {}))
  c.data.update(dict(image_size=size, source="synthetic"))
  c.loss.update(dict(disc_start_step=0, perceptual_dtype=dtype))
  c.train.update(dict(batch_size=batch, num_steps=steps + 1, log_every=10 ** 9, eval_every=0,
                      tensorboard=False))
  c.checkpoint.update(dict(every_steps=10 ** 9))
  with tempfile.TemporaryDirectory() as d:
    lp = os.path.join(d, "lpips.safetensors")
    save_file(random_torch_state(0), lp)
    c.loss.perceptual_weights = lp
    tr = Trainer(c, os.path.join(d, "run"))
    state, _ = tr.initial_state()
    from muse_jax.parallel.distributed import global_batch
    batch_arr = global_batch(next(tr.train_source), tr.batch_sh)
    state, m = tr.train_step_fn(state, batch_arr, np.int32(0))
    jax.block_until_ready(m)
    t = time.perf_counter()
    for i in range(steps):
      state, m = tr.train_step_fn(state, batch_arr, np.int32(i + 1))
    jax.block_until_ready(m)
    tr.ckpt.close()
    return (time.perf_counter() - t) / steps


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", choices=sorted(SETUPS), default="muse",
                  help="muse: f16@256 + f8@512; amused: the aMUSEd VQModel; tiny: CPU smoke")
  ap.add_argument("--tiny", action="store_true", help="shorthand for --config=tiny")
  ap.add_argument("--batch", type=int, default=None,
                  help="global batch (default: 8 x device count; 4 on CPU with --tiny)")
  ap.add_argument("--dtype", default="bfloat16", help="compute dtype (bfloat16 | float32)")
  ap.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
  ap.add_argument("--train", action=argparse.BooleanOptionalAction, default=True,
                  help="also time the vqgan train step")
  ap.add_argument("--train_steps", type=int, default=3)
  args = ap.parse_args()
  setup = "tiny" if args.tiny else args.config
  batch = args.batch or (4 * jax.device_count() if setup == "tiny" else 8 * jax.device_count())
  dtype = "float32" if setup == "tiny" and args.dtype == "bfloat16" else args.dtype
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; batch {batch}; "
        f"compute {dtype}")
  head = f"{'config':<8} {'res':>5} {'tokens':>7} {'params(M)':>10} {'enc img/s':>10} " \
         f"{'dec img/s':>10} {'train step(s)':>14}"
  print(head)
  print("-" * len(head))
  for kind, size in SETUPS[setup]:
    cfg, enc, dec, grid = bench_api(kind, size, batch, dtype, args.repeats)
    from muse_jax.models.functional import functionalize
    fm, _ = functionalize(lambda r: V.VQGAN(cfg, rngs=r))
    n = V.num_params(fm.abstract_params()) / 1e6
    step = bench_train(kind, size, batch, dtype, args.train_steps) if args.train else float("nan")
    print(f"{kind:<8} {size:>5} {f'{grid}x{grid}':>7} {n:>10.1f} {enc:>10.1f} {dec:>10.1f} "
          f"{step:>14.4f}", flush=True)


if __name__ == "__main__":
  main()
