"""Optimizers and learning-rate schedules from `config.optimizer`.

- `adafactor` (the paper's): factored second moments with a *constant* decay b2 (0.96), update
  clipping at RMS 1, first-moment momentum b1 (0.9), decoupled weight decay.
- `adamw`: optax.adamw with b1/b2/eps and decoupled weight decay.
Both: global-norm gradient clipping (`grad_clip`, 0 disables), linear warmup then cosine decay
(or constant). Weight decay applies to matrices only (ndim >= 2), not to norms or biases.
The schedule spans `schedule_length(config.train)` steps: `train.schedule_steps`, which a run
fixes at its first start (training/resume.py), or `train.num_steps` when that is 0.
"""
from __future__ import annotations

import jax
import optax


def schedule_length(train_cfg) -> int:
  """The learning-rate schedule's length in steps (warmup + decay)."""
  return int(train_cfg.get("schedule_steps", 0)) or int(train_cfg.num_steps)


def make_schedule(cfg, num_steps: int):
  peak = cfg.learning_rate
  warmup = int(min(cfg.warmup_steps, max(num_steps - 1, 0)))
  if cfg.schedule == "cosine":
    decay_steps = max(num_steps - warmup, 1)
    after = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_lr_fraction)
  elif cfg.schedule == "constant":
    after = optax.constant_schedule(peak)
  else:
    raise ValueError(f"optimizer.schedule={cfg.schedule!r}; choose cosine or constant")
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def _decay_mask(params):
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg, num_steps: int):
  """Returns (optax.GradientTransformation, schedule)."""
  schedule = make_schedule(cfg, num_steps)
  chain = []
  if cfg.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(cfg.grad_clip))
  if cfg.name == "adamw":
    chain.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=_decay_mask))
  elif cfg.name == "adafactor":
    chain += [
        optax.scale_by_factored_rms(decay_rate=cfg.b2, decay_rate_fn=lambda _, rate: rate,
                                    epsilon=1e-30),
        optax.clip_by_block_rms(1.0),
        optax.ema(cfg.b1, debias=False) if cfg.b1 > 0 else optax.identity(),
        optax.add_decayed_weights(cfg.weight_decay, mask=_decay_mask),
        optax.scale_by_learning_rate(schedule),
    ]
  else:
    raise ValueError(f"optimizer.name={cfg.name!r}; choose adafactor or adamw")
  return optax.chain(*chain), schedule
