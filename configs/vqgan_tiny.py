"""Tiny VQGAN on 32px procedural shapes: for tests and CPU smoke runs.

COMMAND: python -m muse_jax.train --config=configs/vqgan_tiny.py --workdir=/tmp/vqgan_tiny \
           --config.train.num_steps=20
Trains in seconds on CPU (8x8 tokens, 64 codes, GAN from step 10) and leaves a checkpoint.
"""
from muse_jax.configs import common_vqgan


def get_config():
  c = common_vqgan.get_config()
  c.model = common_vqgan.vqgan_model("tiny")
  c.discriminator = common_vqgan.discriminator(
      32, base_channels=8, channel_multipliers=(2, 2), max_channels=16, mbstd_group=2,
      dtype="float32")
  c.loss.update(dict(disc_start_step=10, perceptual_dtype="float32"))
  c.quantizer.update(dict(restart_every=20, usage_ema_decay=0.9))
  c.optimizer.update(dict(learning_rate=2e-3, warmup_steps=5, weight_decay=0.0))
  c.disc_optimizer.update(dict(learning_rate=2e-3, warmup_steps=5, weight_decay=0.0))
  c.data.image_size = 32
  c.train.update(dict(batch_size=8, num_steps=100, log_every=10, eval_every=50,
                      eval_batches=2, image_grid_every=50, image_grid_size=4))
  c.checkpoint.update(dict(every_steps=10, keep=2))
  return c
