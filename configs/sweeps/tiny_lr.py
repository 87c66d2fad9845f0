"""A learning-rate x warmup sweep of configs/tiny.py.

COMMAND: python launch/sweep.py --config=configs/tiny.py --sweep=configs/sweeps/tiny_lr.py \
           --workdir_root=/tmp/sweep --run -- --config.train.num_steps=50
"""


def get_sweep():
  return [{"optimizer.learning_rate": lr, "optimizer.warmup_steps": w}
          for lr in (1e-3, 3e-3) for w in (0, 10)]
