"""A learning-rate x warmup sweep of configs/tiny.py: 4 points.

COMMAND: python launch/sweep.py --config=configs/tiny.py --sweep=configs/sweeps/tiny_lr.py \
           --workdir_root=/tmp/sweep --submit -- --config.train.num_steps=50
         python launch/sweep.py --summarize --workdir_root=/tmp/sweep
Trains the points here, one after another, into /tmp/sweep/<keys=values>-<hash>/, then prints
their final and best losses. --launcher=slurm or --launcher=jobset submits them to a cluster
instead (docs/cluster.md, "Sweeps").
"""


def get_sweep():
  return [{"optimizer.learning_rate": lr, "optimizer.warmup_steps": w}
          for lr in (1e-3, 3e-3) for w in (0, 10)]
