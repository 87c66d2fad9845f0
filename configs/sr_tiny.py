"""Tiny super-resolution transformer on synthetic data: for tests and CPU smoke runs.

COMMAND: python -m muse_jax.train --config=configs/sr_tiny.py --workdir=/tmp/sr_tiny \
           --config.train.num_steps=20
Trains in seconds on CPU (2x2 low-res tokens -> 4x4 high-res tokens, 1 encoder + 2 decoder
layers) and leaves a checkpoint; rerun to resume (a larger num_steps needs the learning-rate
schedule planned for it: --config.train.schedule_steps=N at the first start).
"""
from muse_jax.configs import common_sr


def get_config():
  c = common_sr.get_config()
  c.model.update(dict(codebook_size=64, lowres_grid_size=2, grid_size=4, hidden_size=32,
                      lowres_num_layers=1, num_layers=2, num_heads=2, head_dim=16, mlp_dim=64,
                      text_dim=24, text_length=8, dtype="float32"))
  c.optimizer.update(dict(name="adamw", learning_rate=3e-3, warmup_steps=5, weight_decay=0.0))
  c.train.update(dict(batch_size=16, num_steps=100, log_every=10, eval_every=50,
                      eval_batches=2))
  c.checkpoint.update(dict(every_steps=10, keep=2))
  return c
