"""What a resumed run may change, checked against WORKDIR/config.json before any state is read.

The trainer rewrites config.json at every start; these checks read the one the previous start
left there.

- The learning-rate schedule's length, `train.schedule_steps` (0 = `train.num_steps`), is
  fixed at a run's first start and saved in config.json. A resumed run keeps it, so raising
  `num_steps` does not stretch the cosine and jump the rate back up. A resumed run whose
  `num_steps` goes past the end of a cosine schedule is refused (the steps past it would train at
  the final rate, zero by default): set `train.schedule_steps` to re-plan it (new length) or to
  keep it (the saved length), on purpose.
- The model: a checkpoint whose arrays do not fit the config's state is refused in one line that
  names the config keys that differ from config.json (the model, the stage, the optimizer, the
  EMA), rather than Orbax's restore error.
"""
from __future__ import annotations

from typing import Optional

from muse_jax.configs.checks import ConfigError
from muse_jax.training.optimizer import make_schedule
from muse_jax.workdir.checkpoints import latest_step, state_mismatch
from muse_jax.workdir.saved_config import CONFIG_FILE, saved_config

# model keys a resumed run may change: they do not decide which arrays the state holds.
_RUNTIME_MODEL_KEYS = ("dtype", "param_dtype", "attention", "remat", "dropout", "fp8_matmuls",
                      "fp8_training")


def _optimizers(config) -> list[str]:
  return [name for name in ("optimizer", "disc_optimizer") if name in config]


def _rate(config, length: int, step: int) -> float:
  return float(make_schedule(config.optimizer, length)(step))


def resolve_schedule(config, workdir: str) -> Optional[str]:
  """For a run resumed in `workdir`, sets `config.train.schedule_steps` to the length saved at
  the run's first start unless the config asks for one (a first start saves its own: 0 means
  `num_steps`). Returns a note for the user when a resumed run re-plans its schedule; raises
  ConfigError when raising `num_steps` would run past the end of a cosine schedule."""
  t = config.train
  requested, num_steps = int(t.get("schedule_steps", 0)), int(t.num_steps)
  step = latest_step(workdir)
  saved_train = (saved_config(workdir) or {}).get("train") if step is not None else None
  if not isinstance(saved_train, dict):
    return None
  saved = int(saved_train.get("schedule_steps") or saved_train.get("num_steps") or 0)
  if saved <= 0:
    return None
  t.schedule_steps = requested or saved
  where = f"{workdir}/{CONFIG_FILE}"
  cosine = any(config[o].schedule == "cosine" for o in _optimizers(config))
  if requested == 0 and num_steps > saved and cosine:
    raise ConfigError(
        f"train.num_steps={num_steps} goes past the end of this run's learning-rate schedule "
        f"(train.schedule_steps={saved}, saved in {where}), where the rate stays at "
        f"{_rate(config, saved, saved):.3g}; to extend on purpose, rerun with "
        f"--config.train.schedule_steps={num_steps} (re-plans the cosine: the rate at step "
        f"{step + 1} becomes {_rate(config, num_steps, step):.3g}, now "
        f"{_rate(config, saved, step):.3g}) or --config.train.schedule_steps={saved} (keeps it)")
  if requested and requested != saved:
    return (f"train.schedule_steps={requested} re-plans this run's learning-rate schedule "
            f"(it was {saved}): the rate at step {step + 1} is {_rate(config, requested, step):.3g}"
            f" (was {_rate(config, saved, step):.3g})")
  return None


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
  return out


def state_keys_changed(config, saved: dict) -> list[str]:
  """`key=saved -> now` for each config key that decides the state's arrays and differs from
  the saved config (a dict from config.json)."""
  def pick(c) -> dict:
    c = c if isinstance(c, dict) else c.to_dict()
    model = {k: v for k, v in (c.get("model") or {}).items() if k not in _RUNTIME_MODEL_KEYS}
    out = {"stage": c.get("stage"), **_flat(model, "model.")}
    for o in ("optimizer", "disc_optimizer"):
      if isinstance(c.get(o), dict):
        out[f"{o}.name"] = c[o].get("name")
    out["train.ema_decay > 0"] = float((c.get("train") or {}).get("ema_decay", 0.0)) > 0
    return out

  old, new = pick(saved), pick(config)
  return [f"{k}={old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k)]


def check_state_matches(config, workdir: str, abstract_state) -> None:
  """ConfigError when the newest checkpoint in `workdir` holds a state of another shape than
  `config` builds and the config keys that decide the state differ from the saved config.json
  (named in the message). With those keys unchanged, a checkpoint that does not match is a
  damaged one: the restore's integrity checks deal with it (they fall back to an older step)."""
  step = latest_step(workdir)
  if step is None:
    return
  saved = saved_config(workdir)
  changed = state_keys_changed(config, saved) if saved else []
  if not changed or state_mismatch(workdir, step, abstract_state) is None:
    return
  raise ConfigError(f"the checkpoint at step {step} in {workdir} holds another model than this "
                    f"config builds: the config differs from {workdir}/{CONFIG_FILE} in "
                    f"{', '.join(changed)}; rerun with the saved values to resume, or use a "
                    "new --workdir to start a new run")
