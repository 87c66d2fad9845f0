"""Evaluation of samples during training: the `Hook` that `muse_jax.train` builds from
`config.eval.samples` (muse_jax/configs/common_eval.py).

Every `every` steps and at the last step, each caption set is sampled through the stage being
trained and the stages it needs, and scored:
- base stage: the base model's current parameters (its EMA when it keeps one), decoded by the
  low-res tokenizer;
- sr stage: the trained base stage of `base_workdir` (its tokens are sampled once, at the first
  evaluation, since that stage does not change), then the SR model's current parameters,
  decoded by the high-res tokenizer.
The text encoder and tokenizers are those of the precompute the stage trains on, as
`python -m muse_jax.evaluate --base=... [--sr=...]` finds them. Caption i is sampled with the
key fold_in(key(seed), i) in the same batches of `batch_size` (the last padded with copies of
its last caption) and scored by the same code (muse_jax.evaluation.runner), so the figures
at step N are those of `muse_jax.evaluate` on the checkpoint of step N with the same
settings.

Sampling runs where the parameters are (muse_jax.sampling.sharded: rows over the mesh's data
axes) on every process; the tokens come back to every process, and process 0 decodes, scores
and logs: metrics.jsonl and TensorBoard scalars `eval/<metric>/<set>/<value>` (e.g.
eval/compositional/train_like/overall) and a TensorBoard grid `samples/<set>`. The hook
reads neither the training input nor the training RNG, so a run trains the same with it.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np

from muse_jax import paths
from muse_jax.configs import common_pipeline
from muse_jax.configs.checks import ConfigError
from muse_jax.data.manifest import read_manifest
from muse_jax.encoders.text_encoder import TextEncoder
from muse_jax.evaluation import compositional, reference, runner, scorers
from muse_jax.evaluation.inputs import read_captions, to_uint8
from muse_jax.models import fp8
from muse_jax.sampling import loading, parallel_decode, per_image, sharded
from muse_jax.sampling.image_io import tile
from muse_jax.training.hooks import Hook, HookContext
from muse_jax.training.registry import stage_model
from muse_jax.workdir.saved_config import CONFIG_FILE

# The values logged per metric (keys of runner.summarize's entries).
LOGGED = {"fid": ("fid",), "clip": ("clip_score", "mean_cosine"),
          "compositional": compositional.METRICS}


def caption_sets(spec: str, num: int = 0) -> dict[str, list[str]]:
  """'FILE' or 'NAME=FILE,NAME=FILE' -> {name: captions} (a lone FILE is named by its stem)."""
  sets: dict[str, list[str]] = {}
  for item in (x.strip() for x in str(spec).split(",")):
    if not item:
      continue
    name, path = item.split("=", 1) if "=" in item else (
        os.path.splitext(os.path.basename(item))[0], item)
    if not name or name in sets:
      raise ConfigError(f"eval.samples.captions={spec!r}: caption set names must be unique and "
                        "not empty ('NAME=FILE,NAME=FILE')")
    try:
      captions = read_captions(path)
    except (FileNotFoundError, ValueError) as e:
      raise ConfigError(f"eval.samples.captions: {e}") from None
    sets[name] = captions[:num] if num > 0 else captions
  if not sets:
    raise ConfigError("eval.samples.every > 0 needs eval.samples.captions (a text file, one "
                      "caption per line, or 'NAME=FILE,NAME=FILE')")
  return sets


def parse_metrics(text: str) -> tuple[str, ...]:
  names = [m.strip() for m in str(text).split(",") if m.strip()]
  bad = [m for m in names if m not in runner.METRICS]
  if not names or bad:
    raise ConfigError(f"eval.samples.metrics={text!r}: choose from {', '.join(runner.METRICS)}")
  return tuple(m for m in runner.METRICS if m in names)


def check_captions(sets: dict, metrics) -> None:
  if "compositional" in metrics:
    from muse_jax.data.shapes.grammar import CaptionParseError, parse_caption
    for name, captions in sets.items():
      for i, c in enumerate(captions):
        try:
          parse_caption(c)
        except CaptionParseError:
          raise ConfigError(f"eval.samples.metrics has compositional, which needs shapes "
                            f"captions; caption {i} of set {name!r} ({c!r}) is not in the "
                            "shapes grammar") from None
  if "fid" in metrics and min(len(c) for c in sets.values()) < 2:
    raise ConfigError("eval.samples.metrics has fid, which needs at least 2 captions per set")


def _vq(workdir: str, name: str):
  """The tokenizer of a vqgan workdir, export or diffusers VQModel (as chain.py loads it)."""
  section = common_pipeline.stage_section(os.path.join(workdir, CONFIG_FILE), workdir)
  return loading.load_vq(section, name, None, loading.single_device_mesh())


def _chain(config, s) -> tuple[ml_collections.ConfigDict, str, str]:
  """(text encoder section, low-res tokenizer, high-res tokenizer) of the stage's precompute."""
  pre = str(s.precompute or config.data.path)
  if not pre:
    raise ConfigError("eval.samples needs the precompute the stage trains on (data.path or "
                      "eval.samples.precompute): its manifest names the text encoder")
  try:
    manifest = read_manifest(pre)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f"eval.samples: {e}") from None
  te = ml_collections.ConfigDict(manifest["config"]["text_encoder"])
  trained = os.path.join(pre, "spiece.model")
  if s.spiece_model:
    te.spiece_model = str(s.spiece_model)
  elif not te.spiece_model and paths.resolve(trained).is_file():
    te.spiece_model = trained
  models = manifest.get("models") or {}
  vq = {}
  for key, flag in (("tokenizer", "vq_lo"), ("sr_tokenizer", "vq_hi")):
    vq[flag] = str(s[flag] or ((models.get(key) or {}).get("weights") or ""))
  return te, vq["vq_lo"], vq["vq_hi"]


@dataclasses.dataclass
class _Set:
  """One caption set: its captions, and per padded batch the indices, valid rows, text and
  (sr stage) base tokens."""
  captions: list[str]
  batches: list = dataclasses.field(default_factory=list)


class SampleEvaluation(Hook):
  """The hook (module docstring). Build it with `from_config`; everything that can fail on a
  bad setting fails there, before the first step."""

  def __init__(self, config, log: Callable[[str], None] = print, keep_images: bool = False):
    s = config.eval.samples
    self.config, self.settings, self.log = config, s, log
    self.every = int(s.every)
    self.stage_name = str(config.stage)
    if self.stage_name not in ("base", "sr"):
      raise ConfigError(f"eval.samples: stage {self.stage_name!r} has no samples to evaluate "
                        "(base and sr stages only)")
    self.metrics = parse_metrics(s.metrics)
    self.batch_size, self.seed, self.grid = int(s.batch_size), int(s.seed), int(s.grid)
    if self.batch_size < 1 or self.grid < 0:
      raise ConfigError("eval.samples.batch_size must be >= 1 and eval.samples.grid >= 0")
    self.sets = {n: _Set(c) for n, c in caption_sets(s.captions, int(s.num)).items()}
    check_captions({n: x.captions for n, x in self.sets.items()}, self.metrics)
    if "fid" in self.metrics and not s.reference_stats:
      raise ConfigError("eval.samples.metrics has fid: set eval.samples.reference_stats (a "
                        ".npz of `python -m muse_jax.evaluate --save_stats`)")
    te, vq_lo, vq_hi = _chain(config, s)
    if self.stage_name == "sr" and not s.base_workdir:
      raise ConfigError("eval.samples on an sr stage needs eval.samples.base_workdir (the "
                        "trained base stage its samples start from)")
    vq_dir, vq_flag = (vq_hi, "vq_hi") if self.stage_name == "sr" else (vq_lo, "vq_lo")
    if not vq_dir:
      raise ConfigError(f"eval.samples: the precompute used a random tokenizer, which no "
                        f"workdir holds: set eval.samples.{vq_flag}")
    self.sampling = s.sampling
    self.opts = parallel_decode.decode_options(self.sampling, self.stage_name)
    self.is_main = jax.process_index() == 0
    # Process 0: {set: (results, uint8 images or None)} of the last evaluation; the images
    # only with keep_images (they are all the samples of a set).
    self.latest: dict = {}
    self.keep_images = keep_images
    self.model_def = stage_model(config)
    self.base = None
    try:
      if self.stage_name == "sr":
        section = common_pipeline.stage_section(os.path.join(str(s.base_workdir), CONFIG_FILE),
                                                str(s.base_workdir))
        self.base = loading.load_transformer(section, "base")
      self.vq = _vq(vq_dir, vq_flag)
    except (FileNotFoundError, ValueError) as e:   # MissingCheckpoint is a FileNotFoundError
      raise ConfigError(f"eval.samples: {e}") from None
    if self.base is not None and (
        int(self.base.model.grid_size) != int(config.model.lowres_grid_size)
        or int(self.base.model.codebook_size) != int(config.model.codebook_size)):
      raise ConfigError(f"eval.samples.base_workdir={s.base_workdir} makes "
                        f"{self.base.grid}x{self.base.grid} tokens of "
                        f"{self.base.model.codebook_size} codes; this SR stage reads "
                        f"{config.model.lowres_grid_size}x{config.model.lowres_grid_size} of "
                        f"{config.model.codebook_size}")
    encoder = TextEncoder.from_config(te, mesh=loading.single_device_mesh())
    if encoder.tokenizer is None:
      raise ConfigError("eval.samples: the precompute's text encoder has no spiece_model; set "
                        "eval.samples.spiece_model")
    d, m = int(encoder.config.d_model), config.model
    if int(m.text_dim) != d or self.vq.cfg.codebook_size != int(m.codebook_size):
      raise ConfigError(f"eval.samples: the stage's model.text_dim={m.text_dim} and "
                        f"codebook_size={m.codebook_size} do not fit its precompute's text "
                        f"encoder ({d}-d) and tokenizer ({self.vq.cfg.codebook_size} codes)")
    self._encode_sets(encoder)
    self.inception = self.clip = self.ref = self.ref_info = None
    if self.is_main:
      self._load_scorers()

  @classmethod
  def from_config(cls, config, log: Callable[[str], None] = print,
                  keep_images: bool = False) -> Optional["SampleEvaluation"]:
    """The hook of `config.eval.samples`, or None when it is off (or the config has none)."""
    if "eval" not in config or int(config.eval.samples.every) <= 0:
      return None
    return cls(config, log, keep_images)

  # --- set-up --------------------------------------------------------------------------------

  def _text_length(self) -> int:
    """The base stage's text length, to which Pipeline.encode_text pads the text."""
    return int((self.config if self.base is None else self.base.config).model.text_length)

  def _encode_sets(self, encoder) -> None:
    """Text of every padded batch (as Pipeline.conditions makes it), encoded once."""
    neg = str(self.sampling.get("negative_prompt", "") or "")
    length = self._text_length()
    d = int(encoder.config.d_model)

    def enc(prompts):
      emb, mask = encoder.encode(list(prompts))
      emb = sharded.pad_text(np.asarray(emb, np.float32), length)
      return emb, np.asarray(np.sum(np.asarray(mask), axis=-1), np.int32)

    neg_text = enc([neg]) if neg else None
    for x in self.sets.values():
      for idx, valid in runner.padded_batches(len(x.captions), self.batch_size):
        cond = enc([x.captions[i] for i in idx])
        b = len(idx)
        if neg_text is None:
          uncond = (np.zeros((b, length, d), np.float32), np.zeros((b,), np.int32))
        else:
          uncond = (np.broadcast_to(neg_text[0], (b,) + neg_text[0].shape[1:]),
                    np.broadcast_to(neg_text[1], (b,)))
        keys = jax.vmap(jax.random.split)(per_image.image_keys(self.seed, idx))
        x.batches.append(dict(idx=idx, valid=valid, cond=cond, uncond=uncond,
                              keys=np.asarray(jax.random.key_data(keys)), lo=None))

  def _load_scorers(self) -> None:
    s = self.settings
    if "fid" in self.metrics:
      self.inception = scorers.load_inception(s.inception_weights or None, s.inception_variant,
                                              int(s.inception_size))
      try:
        self.ref, self.ref_info = reference.load(str(s.reference_stats), self.inception)
      except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"eval.samples: {e}") from None
    if "clip" in self.metrics:
      self.clip = scorers.load_clip(s.clip_weights or None, s.clip_model)
    notes = [sc.info["note"] for sc in (self.inception, self.clip)
             if sc is not None and sc.info.get("note")]
    self.log(f"eval.samples every {self.every} steps: {', '.join(self.metrics)} on "
             + ", ".join(f"{n} ({len(x.captions)} captions)" for n, x in self.sets.items())
             + (f"; {'; '.join(notes)}" if notes else ""))

  # --- sampling ----------------------------------------------------------------------------

  def _loaded(self, params, step: int) -> loading.LoadedStage:
    params = loading.cast_params(params, self.config.model.dtype)
    if self.config.model.get("fp8_matmuls", False):
      params = fp8.quantize_params(params)
    return loading.LoadedStage(self.stage_name, self.config, self.model_def, params, step)

  def _base_tokens(self, mesh) -> None:
    """The fixed base stage's tokens of every batch (sr stage), sampled once."""
    if self.base is None or all(b["lo"] is not None for x in self.sets.values()
                                for b in x.batches):
      return
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    params = jax.tree.map(lambda a: sharded.global_array(np.asarray(a), replicated),
                          self.base.params)
    base = dataclasses.replace(self.base, params=params)
    opts = parallel_decode.decode_options(self.sampling, "base")
    for x in self.sets.values():
      for b in x.batches:
        b["lo"] = sharded.sample_tokens(base, "base", opts, b["cond"], b["uncond"],
                                        b["keys"][:, 0], mesh)
    self.base = dataclasses.replace(self.base, params=None)   # not needed any more

  def _images(self, loaded, b: dict, mesh) -> Optional[np.ndarray]:
    """uint8 images of one padded batch on process 0 (None elsewhere)."""
    if self.stage_name == "base":
      tokens = sharded.sample_tokens(loaded, "base", self.opts, b["cond"], b["uncond"],
                                     b["keys"][:, 0], mesh)
    else:
      tokens = sharded.sample_tokens(loaded, "sr", self.opts, b["cond"], b["uncond"],
                                     b["keys"][:, 1], mesh, tokens_lo=b["lo"])
    if not self.is_main:
      return None
    g = loaded.grid
    return to_uint8(np.asarray(self.vq.decode(tokens.reshape(-1, g, g))), "samples")

  # --- the hook ----------------------------------------------------------------------------

  def __call__(self, ctx: HookContext) -> None:
    t0 = time.perf_counter()
    self._base_tokens(ctx.mesh)
    loaded = self._loaded(ctx.stage.params_for_export(ctx.state), ctx.step)
    scalars, lines, self.latest = {}, [], {}
    for name, x in self.sets.items():
      ev = runner.Evaluation(out="", captions=x.captions, metrics=self.metrics,
                             batch_size=self.batch_size, chunk_size=self.batch_size,
                             identity={}, inception=self.inception, clip=self.clip)
      acc, grid, kept = runner.Accumulators(self.metrics), [], []
      for b in x.batches:
        images = self._images(loaded, b, ctx.mesh)
        if images is None:
          continue
        acc.update(ev, images, [x.captions[i] for i in b["idx"]], b["valid"])
        grid.extend(images[:b["valid"]][:self.grid - len(grid)])
        if self.keep_images:
          kept.append(images[:b["valid"]])
      if not ctx.is_main:
        continue
      results = runner.summarize(ev, acc, self.ref, self.ref_info)
      self.latest[name] = (results, np.concatenate(kept) if self.keep_images else None)
      for metric, r in results.items():
        for key in LOGGED[metric]:
          scalars[f"eval/{metric}/{name}/{key}"] = float(r[key])
      lines += [f"  {name}: {line}" for line in runner.summary_lines(results)]
      if grid:
        ctx.reporter.images(ctx.step, f"samples/{name}", tile(np.stack(grid)) / 255.0)
    if ctx.is_main:
      ctx.reporter.record(ctx.step, scalars)
      ctx.reporter.scalars(ctx.step, scalars)
      ctx.reporter.message(f"samples @ {ctx.step} ({time.perf_counter() - t0:.1f} s):\n"
                           + "\n".join(lines))

