"""Start-time config checks: fail early with one line that says what to change.

Every check raises `ConfigError`, which every entry point prints as one line on stderr with exit
status 2. The reference for allowed keys is the stage's `reference_config()`; a misspelt key is
reported with the closest known name. The full validation of a training config (these checks
plus the stage's own) is `muse_jax.training.registry.validate`.
"""
from __future__ import annotations

import difflib

import jax.numpy as jnp
import ml_collections


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and what to change."""


def check_keys(cfg, ref, prefix: str = "config") -> None:
  for key in cfg.keys():
    if key not in ref:
      close = difflib.get_close_matches(key, list(ref.keys()), n=1)
      hint = f"; did you mean {prefix}.{close[0]}?" if close else ""
      raise ConfigError(f"unknown config key {prefix}.{key}{hint}")
    if isinstance(ref[key], ml_collections.ConfigDict):
      if not isinstance(cfg[key], ml_collections.ConfigDict):
        raise ConfigError(f"{prefix}.{key} must be a section (ConfigDict)")
      check_keys(cfg[key], ref[key], f"{prefix}.{key}")


def check_positive(cfg, section: str, names) -> None:
  for n in names:
    v = cfg[section][n]
    if not isinstance(v, int) or v <= 0:
      raise ConfigError(f"{section}.{n}={v!r} must be a positive integer")


def check_transformer(m) -> None:
  """`config.model` of a base or sr stage."""
  check_positive({"model": m}, "model", ["codebook_size", "grid_size", "hidden_size",
                                         "num_layers", "num_heads", "head_dim", "mlp_dim",
                                         "text_dim", "text_length"])
  if m.attention not in ("xla", "cudnn", "auto", "pallas"):
    raise ConfigError(f"model.attention={m.attention!r}; choose xla, cudnn, auto or pallas "
                      "(muse_jax/models/layers.py resolve_attention)")
  if m.attention == "cudnn":
    if m.dtype not in ("bfloat16", "float16"):
      raise ConfigError("model.attention=cudnn needs model.dtype=bfloat16 or float16")
    if m.text_length % 64:
      raise ConfigError(f"model.text_length={m.text_length}: cuDNN flash attention needs a "
                        "multiple of 64 (e.g. 128); or use model.attention=xla")
  for name in ("dtype", "param_dtype"):
    try:
      jnp.dtype(m[name])
    except TypeError as e:
      raise ConfigError(f"model.{name}={m[name]!r} is not a dtype (use float32 or bfloat16)") from e
  if not 0.0 <= m.dropout < 1.0:
    raise ConfigError(f"model.dropout={m.dropout} must be in [0, 1)")


def check_training(config) -> None:
  """The sections every stage shares: train, optimizer, checkpoint."""
  t = config.train
  check_positive(config, "train", ["batch_size", "num_steps", "grad_accum", "eval_batches"])
  if t.batch_size % t.grad_accum:
    raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by "
                      f"train.grad_accum={t.grad_accum}")
  schedule_steps = t.get("schedule_steps", 0)
  if not isinstance(schedule_steps, int) or schedule_steps < 0:
    raise ConfigError(f"train.schedule_steps={schedule_steps!r} must be a whole number of steps "
                      "(0: train.num_steps)")
  if not 0.0 <= t.ema_decay < 1.0:
    raise ConfigError(f"train.ema_decay={t.ema_decay} must be in [0, 1) (0 disables)")
  o = config.optimizer
  if o.name not in ("adafactor", "adamw"):
    raise ConfigError(f"optimizer.name={o.name!r}; choose adafactor or adamw")
  if o.learning_rate <= 0:
    raise ConfigError(f"optimizer.learning_rate={o.learning_rate} must be > 0")
  if config.checkpoint.every_steps <= 0 or config.checkpoint.keep <= 0:
    raise ConfigError("checkpoint.every_steps and checkpoint.keep must be positive")
