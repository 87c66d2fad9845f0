"""Choosing sampling settings on the validation captions, never on the evaluation ones.

`eval.validation_captions` train-split scenes drawn at a seed of their own
(`eval.validation_seed_offset`) score the config's guidance, none and each
`eval.guidance_sweep` entry; the best is chosen (`eval.use_chosen_guidance`: the evaluation
samples then use it). Then, at the guidance the evaluation uses, the config's sampling
temperature and each `eval.temperature_sweep` entry; the best is chosen
(`eval.use_chosen_temperature`). One setting at a time: guidance at the config's temperature,
then temperature at that guidance. `check_eval_config` rejects settings that would choose on
anything else.
"""
from __future__ import annotations

from muse_jax.configs.checks import ConfigError
from muse_jax.demo.constants import acc_line
from muse_jax.evaluation import compositional


def sweep_scales(entry) -> tuple[float, float]:
  """(base, SR) guidance of one `eval.guidance_sweep` entry: a number (both stages) or a
  (base, SR) pair."""
  if isinstance(entry, (tuple, list)):
    if len(entry) != 2:
      raise ValueError(f"eval.guidance_sweep entry {entry!r}: use a number or a (base, sr) pair")
    return float(entry[0]), float(entry[1])
  return float(entry), float(entry)


def sweep_name(base: float, sr: float) -> str:
  """metrics.json key of a sweep entry: '2' (both stages) or '3/0' (base 3, SR 0)."""
  return f"{base:g}" if base == sr else f"{base:g}/{sr:g}"


def check_eval_config(config) -> None:
  """ConfigError (exit 2) for `eval` settings that cannot work, before any stage runs.

  Settings are chosen on the validation captions only: a sweep or a `use_chosen_*` without
  them would have nothing honest to choose on, and the validation scenes must be
  drawn with a seed of their own (neither training's nor the train-like eval captions').
  """
  e = config.eval
  n = int(e.validation_captions)
  if n < 0:
    raise ConfigError(f"eval.validation_captions={n}: use 0 (off) or a number of captions")
  if n == 0 and tuple(e.guidance_sweep):
    raise ConfigError("eval.guidance_sweep is scored on the validation captions only: set "
                      "eval.validation_captions (e.g. 256) or leave the sweep empty")
  if n == 0 and tuple(e.temperature_sweep):
    raise ConfigError("eval.temperature_sweep is scored on the validation captions only: set "
                      "eval.validation_captions (e.g. 256) or leave the sweep empty")
  for key in ("use_chosen_guidance", "use_chosen_temperature"):
    if n == 0 and e[key]:
      raise ConfigError(f"eval.{key} needs eval.validation_captions > 0 (the setting is "
                        "chosen on them)")
  offset = int(e.validation_seed_offset)
  if n and offset in (0, int(e.caption_seed_offset)):
    raise ConfigError(f"eval.validation_seed_offset={offset}: use a value other than 0 "
                      f"(training's scenes) and eval.caption_seed_offset "
                      f"({int(e.caption_seed_offset)}, the train-like evaluation captions)")
  for entry in e.guidance_sweep:
    try:
      sweep_scales(entry)
    except (TypeError, ValueError) as err:
      raise ConfigError(str(err)) from err
  for t in e.temperature_sweep:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0:
      raise ConfigError(f"eval.temperature_sweep entry {t!r}: use a number >= 0 (0 = argmax)")


def guidance_candidates(default: tuple[float, float], sweep) -> dict:
  """{sweep_name: (base, SR)} scored on the validation captions: the config's guidance first,
  then none, then the `eval.guidance_sweep` entries (each setting once)."""
  out: dict = {}
  for scales in (default, (0.0, 0.0), *map(sweep_scales, sweep)):
    out.setdefault(sweep_name(*scales), scales)
  return out


def temperature_candidates(default: float, sweep) -> dict:
  """{name: temperature} scored on the validation captions: the config's first, then the
  `eval.temperature_sweep` entries (each once)."""
  out: dict = {}
  for t in (float(default), *map(float, sweep)):
    out.setdefault(f"{t:g}", t)
  return out


def choose_best(scores: dict, default_name: str) -> str:
  """The name in `scores` ({name: accuracy dict}) with the best `overall`; a tie goes to the
  config's default, then to the earlier entry."""
  best = default_name
  for name, acc in scores.items():
    if acc["overall"] > scores[best]["overall"]:
      best = name
  return best


def headline_guidance(default: tuple[float, float], validation: dict | None,
                      use_chosen: bool) -> tuple[tuple[float, float], bool]:
  """((base, SR), chosen_on_validation): the guidance of the evaluation splits' `cfg` rows."""
  if use_chosen and validation:
    g = validation["chosen_guidance"]
    return (float(g["base"]), float(g["sr"])), True
  return default, False


def headline_temperature(default: float, validation: dict | None,
                         use_chosen: bool) -> tuple[float, bool]:
  """(temperature, chosen_on_validation): the evaluation samples' sampling temperature."""
  if use_chosen and validation:
    return float(validation["chosen_temperature"]), True
  return float(default), False


def score_validation(demo, sample, default: tuple[float, float],
                     default_temperature: float) -> dict:
  """Detector accuracy of every guidance candidate on the validation captions and the best,
  then of every temperature candidate at the guidance the evaluation uses and the best.

  `sample(captions, (base, sr), temperature)` -> uint8 images. Returns metrics.json's
  `validation`."""
  e = demo.config.eval
  captions = [ex.caption for ex in demo.validation_captions()]
  candidates = guidance_candidates(default, e.guidance_sweep)
  default_name = sweep_name(*default)
  t_candidates = temperature_candidates(default_temperature, e.temperature_sweep)
  t_default = f"{float(default_temperature):g}"
  demo.log("samples", f"validation: {len(captions)} train-split captions of their own (shapes "
           f"seed + {int(e.validation_seed_offset)}), neither training's nor the evaluation's; "
           f"guidance {', '.join(candidates)} at temperature {t_default}, then temperature "
           f"{', '.join(t_candidates)}, scored on them only")

  def score(what, name, is_default, *setting):
    r = compositional.evaluate(sample(captions, *setting), captions)
    demo.log("samples", f"validation {what} {name}" + (" (the config's)" if is_default else "")
             + ": " + acc_line(r))
    return r

  def report(what, chosen, default, key):
    use = bool(e[key])
    demo.log("samples", f"validation: chosen {what} {chosen} (best all four; ties go to the "
             "config's); " + (f"the evaluation samples use it (eval.{key})" if use else
                              f"the evaluation samples use the config's {default} "
                              f"(eval.{key}=False: the choice is only reported)"))

  scores = {name: score("guidance", name, name == default_name, scales, default_temperature)
            for name, scales in candidates.items()}
  chosen = choose_best(scores, default_name)
  report("guidance", chosen, default_name, "use_chosen_guidance")
  base, sr = candidates[chosen]
  out = {"captions": captions, "sweep": scores, "default": default_name, "chosen": chosen,
         "chosen_guidance": {"base": base, "sr": sr}}
  guidance, _ = headline_guidance(default, out, bool(e.use_chosen_guidance))
  # The config's temperature at that guidance was scored above.
  t_scores = {t_default: scores[sweep_name(*guidance)]}
  for name, t in t_candidates.items():
    if name not in t_scores:
      t_scores[name] = score("temperature", name, False, guidance, t)
  t_chosen = choose_best(t_scores, t_default)
  report("temperature", t_chosen, t_default, "use_chosen_temperature")
  out.update({"temperature_guidance": sweep_name(*guidance), "temperature_sweep": t_scores,
              "default_temperature": t_default, "chosen_temperature": t_candidates[t_chosen]})
  return out
