"""Tiny base transformer on synthetic data: for tests and CPU smoke runs.

COMMAND: python -m muse_jax.train --config=configs/tiny.py --workdir=/tmp/tiny \
           --config.train.num_steps=20
Trains in seconds on CPU and leaves a checkpoint; rerun to resume (to go further later, plan
the learning-rate schedule with --config.train.schedule_steps=N at the first start).
"""
from muse_jax.configs import common


def get_config():
  c = common.get_config("base")
  c.model.update(dict(codebook_size=64, grid_size=4, hidden_size=32, num_layers=2, num_heads=2,
                      head_dim=16, mlp_dim=64, text_dim=24, text_length=8, dtype="float32"))
  c.optimizer.update(dict(name="adamw", learning_rate=3e-3, warmup_steps=5, weight_decay=0.0))
  c.train.update(dict(batch_size=16, num_steps=100, log_every=10, eval_every=50,
                      eval_batches=2))
  c.checkpoint.update(dict(every_steps=10, keep=2))
  return c
