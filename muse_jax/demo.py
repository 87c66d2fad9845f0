r"""The end-to-end demo on the embedded shapes dataset: tokenizer -> precompute -> base -> SR ->
samples, edits and compositional metrics.

  python -m muse_jax.demo --config=configs/demo_cpu.py --workdir=demo_out \
      [--config.base.train.num_steps=600 --config.eval.num_captions=128 ...]

Stages, run in order in this one process through the library APIs (one JAX start-up):
  1. tokenizer   trains ONE f4 VQGAN on `image_size` shapes images (muse_jax.training.loop);
                 being convolutional it encodes the low-res (`lowres_size`) images for the
                 base stage and the high-res ones for the SR stage.        -> WORKDIR/tokenizer
  2. precompute  shapes train/heldout splits -> VQ tokens at both resolutions + embeddings of
                 a frozen random-init tiny T5 (with a sentencepiece model trained on the
                 captions) -> shards (muse_jax.data.precompute).             -> WORKDIR/precompute
  3. base        the base masked transformer on the low-res tokens.         -> WORKDIR/base
  4. sr          the super-resolution transformer (low-res -> high-res tokens). -> WORKDIR/sr
  5. samples     text-to-image (muse_jax.sampling.pipeline) for `eval.num_captions` new
                 train-like captions and as many held-out captions (colour-shape pairs never
                 seen in training), with and without classifier-free guidance; the detector
                 (muse_jax.evaluation) scores each image for count, colour, shape, position.
  6. edits       one inpainting, one outpainting and one mask-free edit of dataset images.
  7. report      WORKDIR/metrics.json.

The text encoder is a randomly initialised tiny T5 (seeded, so precompute and sampling compute
the same deterministic random features of the caption tokens): the demo shows the system, not
T5's language knowledge. Real runs use T5-XXL weights (configs/common_t5.py).

Stage configs. The demo config holds one full training config per stage (`vqgan`, `precompute`,
`base`, `sr`: the same ConfigDicts `python -m muse_jax.train` / `muse_jax.precompute` take) plus
`sampling`, `eval` and `edits`. Keys that link the stages are filled in here and need no
setting: tokenizer weights/model/resolutions of precompute, data path, codebook size, token
grids and text width/length of base and SR (see `stage_configs`).

Writes to WORKDIR:
  samples_train.png, samples_heldout.png   grids of guided samples (captions, row by row, in
                                           metrics.json: samples.<split>.grid_captions)
  inpaint.png, outpaint.png, maskfree.png  input | mask (grey = regenerated) | output; input |
                                           output for the mask-free edit
  metrics.json     detector accuracy per attribute for {train, heldout} x {cfg, no_cfg}, the
                   detector on the dataset images and on their tokenizer reconstructions (the
                   ceilings), first/last training losses, stage timings, command and configs
  tokenizer/ precompute/ base/ sr/         the stage workdirs (checkpoints, metrics.jsonl, ...)
  demo_state.json                          finished stages, their timings and results

Resuming. Rerunning the same command skips finished stages (a training stage is finished when
its newest checkpoint reached train.num_steps, precompute when its manifest exists, the others
when demo_state.json records them); an interrupted training stage resumes from its checkpoint
and an interrupted precompute skips its finished shards. Raising a stage's num_steps and
rerunning continues that stage; downstream stages are not redone by themselves: delete their
entries in demo_state.json (or use a new workdir) after changing an earlier stage.

Exit status: 0 done; 2 bad config; 3 non-finite loss; 143 stopped by SIGTERM (rerun to resume).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

STAGES = ("tokenizer", "precompute", "base", "sr", "samples", "edits", "report")
STATE_FILE = "demo_state.json"
METRICS_FILE = "metrics.json"
SPLITS = ("train", "heldout")
GUIDANCE = ("cfg", "no_cfg")


# --------------------------------------------------------------------------------------------
# Config resolution.
# --------------------------------------------------------------------------------------------


def _factor(block_out_channels) -> int:
  return 2 ** (len(tuple(block_out_channels)) - 1)


def stage_configs(config, workdir: str) -> dict:
  """The runnable config of every stage, with the keys that link the stages filled in.

  Returns {'tokenizer', 'precompute', 'base', 'sr'}: copies of config.vqgan, .precompute,
  .base, .sr (the demo config is not changed) and 'text_encoder' (the sampling encoder).
  """
  import ml_collections
  from muse_jax.models import t5
  workdir = os.path.abspath(workdir)
  hi, lo = int(config.image_size), int(config.lowres_size)
  f = _factor(config.vqgan.model.block_out_channels)
  if hi % f or lo % f or lo > hi:
    from muse_jax.config import ConfigError
    raise ConfigError(f"image_size={hi} and lowres_size={lo} must be multiples of the tokenizer's "
                     f"downsampling factor {f}, with lowres_size <= image_size")
  copy = lambda c: ml_collections.ConfigDict(c.to_dict())  # noqa: E731

  vq = copy(config.vqgan)
  vq.seed = int(config.seed)
  vq.data.image_size = hi
  vq.discriminator.image_size = hi

  pre = copy(config.precompute)
  tok_dir = os.path.join(workdir, "tokenizer")
  for name, res in (("tokenizer", lo), ("sr_tokenizer", hi)):
    pre[name].model = copy(vq.model)
    pre[name].weights = tok_dir
    pre[name].resolution = res
  pre.data.shapes.seed = int(config.seed)
  te = pre.text_encoder
  d_model = t5.get_config(te.size).d_model
  codebook = int(vq.model.codebook_size)
  pre_dir = os.path.join(workdir, "precompute")

  out = {"tokenizer": vq, "precompute": pre}
  for name, grid in (("base", lo // f), ("sr", hi // f)):
    c = copy(config[name])
    c.seed = int(config.seed)
    c.model.update(dict(codebook_size=codebook, grid_size=grid, text_dim=d_model,
                        text_length=int(te.max_length)))
    if name == "sr":
      c.model.lowres_grid_size = lo // f
    c.data.update(dict(source="precomputed", path=pre_dir, eval_path=""))
    out[name] = c
  enc = copy(te)
  enc.spiece_model = os.path.join(pre_dir, "spiece.model")
  out["text_encoder"] = enc
  return out


def _fingerprint(cfg) -> str:
  return hashlib.sha256(cfg.to_json_best_effort(sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# State, progress and images.
# --------------------------------------------------------------------------------------------


class Demo:
  """Runs the stages of one demo workdir; `run()` does all of them."""

  def __init__(self, config, workdir: str, stream=None, argv=None):
    self.config = config
    self.workdir = os.path.abspath(workdir)
    self.stream = stream or sys.stdout
    self.argv = list(argv) if argv is not None else list(sys.argv)
    os.makedirs(self.workdir, exist_ok=True)
    self.cfgs = stage_configs(config, self.workdir)
    self.state_path = os.path.join(self.workdir, STATE_FILE)
    self.state = {"stages": {}}
    if os.path.exists(self.state_path):
      with open(self.state_path) as fh:
        self.state = json.load(fh)
    self.t0 = time.perf_counter()
    self.pipeline = None

  # --- bookkeeping -------------------------------------------------------------------------

  def log(self, stage: str, text: str) -> None:
    from muse_jax.training.reporting import format_duration
    i = STAGES.index(stage) + 1
    print(f"[demo {i}/{len(STAGES)} {stage}] {text} ({format_duration(self.elapsed())} "
          "elapsed)", file=self.stream, flush=True)

  def elapsed(self) -> float:
    return time.perf_counter() - self.t0

  def _save_state(self) -> None:
    tmp = f"{self.state_path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
      json.dump(self.state, fh, indent=1, sort_keys=True)
      fh.write("\n")
    os.replace(tmp, self.state_path)

  def done(self, stage: str) -> dict | None:
    return self.state["stages"].get(stage)

  def finish(self, stage: str, seconds: float, **result) -> None:
    self.state["stages"][stage] = {"seconds": round(seconds, 2), **result}
    self._save_state()

  def path(self, *parts) -> str:
    return os.path.join(self.workdir, *parts)

  def _check_fingerprint(self, stage: str, cfg) -> None:
    rec = self.done(stage)
    if rec and rec.get("config_sha") and rec["config_sha"] != _fingerprint(cfg):
      self.log(stage, "warning: the config differs from the one that produced this stage's "
               "output; delete its entry in demo_state.json or use a new --workdir to redo it")

  # --- stages ------------------------------------------------------------------------------

  def run(self) -> dict:
    import jax
    self.log("tokenizer", f"workdir {self.workdir}; JAX {jax.__version__} on "
             f"{jax.device_count()} {jax.devices()[0].platform} device(s)")
    self.train_stage("tokenizer")
    self.precompute()
    self.train_stage("base")
    self.train_stage("sr")
    self.samples()
    self.edits()
    return self.report()

  def train_stage(self, stage: str) -> None:
    from muse_jax.config import validate
    from muse_jax.sampling.checkpoints import latest_step
    from muse_jax.training.loop import Trainer
    cfg = self.cfgs[stage]
    wd = self.path(stage)
    total = int(cfg.train.num_steps)
    self._check_fingerprint(stage, cfg)
    step = latest_step(wd)
    if step is not None and step >= total:
      rec = self.done(stage)
      if rec is None:  # finished by a run that was stopped before recording it
        self.finish(stage, 0.0, steps=step, config_sha=_fingerprint(cfg),
                    **_loss_summary(wd))
      self.log(stage, f"finished already (step {step}); skipping")
      return
    validate(cfg)
    m = cfg.model
    if stage == "tokenizer":
      what = (f"VQGAN f{_factor(m.block_out_channels)} at {cfg.data.image_size}px, "
              f"{m.codebook_size} codes")
    elif stage == "base":
      what = f"base transformer, {m.grid_size}x{m.grid_size} tokens"
    else:
      what = (f"SR transformer, {m.lowres_grid_size}x{m.lowres_grid_size} -> "
              f"{m.grid_size}x{m.grid_size} tokens")
    self.log(stage, f"training the {what} for {total} steps (batch {cfg.train.batch_size}) "
             f"in {wd}" + (f", resuming from step {step}" if step else ""))
    t = time.perf_counter()
    Trainer(cfg, wd, stream=self.stream).run()
    seconds = time.perf_counter() - t + (self.done(stage) or {}).get("seconds", 0.0)
    summary = _loss_summary(wd)
    self.finish(stage, seconds, steps=total, config_sha=_fingerprint(cfg), **summary)
    self.log(stage, f"done in {seconds:.0f} s; loss {summary.get('loss_first', float('nan')):.4g}"
             f" -> {summary.get('loss_last', float('nan')):.4g}")

  def precompute(self) -> None:
    from muse_jax.data.precompute import MANIFEST, run_precompute
    cfg = self.cfgs["precompute"]
    wd = self.path("precompute")
    self._check_fingerprint("precompute", cfg)
    if os.path.exists(os.path.join(wd, MANIFEST)):
      if self.done("precompute") is None:
        self.finish("precompute", 0.0, config_sha=_fingerprint(cfg))
      self.log("precompute", f"finished already ({wd}/{MANIFEST}); skipping")
      return
    s = cfg.data.shapes
    self.log("precompute", f"shapes train {s.num_train} + heldout {s.num_heldout} images -> "
             f"tokens at {cfg.tokenizer.resolution} and {cfg.sr_tokenizer.resolution} px + "
             f"random tiny T5 ({cfg.text_encoder.size}) embeddings in {wd}")
    t = time.perf_counter()
    manifest = run_precompute(cfg, wd, stream=self.stream)
    seconds = time.perf_counter() - t
    self.finish("precompute", seconds, config_sha=_fingerprint(cfg),
                records={k: v["records"] for k, v in manifest["splits"].items()})
    self.log("precompute", f"done in {seconds:.0f} s")

  def load_pipeline(self):
    """The trained cascade (base -> SR -> VQ decode), built from this demo's stages."""
    if self.pipeline is not None:
      return self.pipeline
    from muse_jax.models import vqgan as V
    from muse_jax.models.text_encoder import TextEncoder
    from muse_jax.models.tokenizer import VQTokenizer
    from muse_jax.sampling import checkpoints as ckpt
    from muse_jax.sampling.pipeline import Pipeline
    from muse_jax.sampling.stages import LoadedStage, cast_params, single_device_mesh
    mesh = single_device_mesh()
    stages = {}
    for name in ("base", "sr"):
      cfg = self.cfgs[name]
      params, step = ckpt.load_stage_params(cfg, self.path(name), name=name)
      stages[name] = LoadedStage(name, cfg, ckpt.stage_model(cfg),
                                 cast_params(params, cfg.model.dtype), step)
    vq_cfg = self.cfgs["tokenizer"]
    vq_params, _ = ckpt.load_stage_params(vq_cfg, self.path("tokenizer"), name="tokenizer")
    vq = VQTokenizer(V.VQGANConfig.from_config(vq_cfg.model), vq_params, mesh)
    encoder = TextEncoder.from_config(self.cfgs["text_encoder"], mesh=mesh)
    sampling = _copy(self.config.sampling)
    self.pipeline = Pipeline(sampling, encoder, vq, stages["base"], stages["sr"], vq,
                             rng_impl=self.config.eval.get("rng_impl") or None)
    return self.pipeline

  def eval_captions(self, split: str) -> list:
    """`eval.num_captions` scenes of `split` (train-like: indices after the training set)."""
    from muse_jax.data import shapes
    e = self.config.eval
    start = int(self.cfgs["precompute"].data.shapes.num_train) if split == "train" else 0
    seed = int(self.config.seed) + int(e.caption_seed_offset)
    return [shapes.generate(start + i, split, seed, int(self.config.image_size))
            for i in range(int(e.num_captions))]

  def samples(self) -> None:
    import numpy as np
    from muse_jax.evaluation import compositional
    if self.done("samples"):
      self.log("samples", "finished already; skipping")
      return
    e = self.config.eval
    pipe = self.load_pipeline()
    s = pipe.sampling
    self.log("samples", f"{e.num_captions} train-like + {e.num_captions} held-out captions, "
             f"with CFG (guidance {s.guidance_scale}/{s.sr_guidance_scale}) and without; "
             f"{s.base_steps} base + {s.sr_steps} SR steps; {pipe.image_size}px")
    t = time.perf_counter()
    guided = (float(s.guidance_scale), float(s.sr_guidance_scale))
    result = {"guidance_scale": guided[0], "sr_guidance_scale": guided[1]}
    for split in SPLITS:
      examples = self.eval_captions(split)
      captions = [ex.caption for ex in examples]
      real = np.stack([ex.image for ex in examples])
      rec = _to_uint8(pipe.decode_tokens(*pipe.encode_image(real)))
      split_res = {
          "captions": captions,
          "dataset_images": compositional.evaluate(real, captions),
          "tokenizer_reconstructions": compositional.evaluate(rec, captions),
      }
      for mode in GUIDANCE:
        with s.unlocked():
          s.guidance_scale, s.sr_guidance_scale = guided if mode == "cfg" else (0.0, 0.0)
        images = _to_uint8(_generate_batched(pipe, captions, int(e.batch_size),
                                             int(self.config.seed)))
        split_res[mode] = compositional.evaluate(images, captions)
        np.savez_compressed(self.path(f"samples_{split}_{mode}.npz"), images=images,
                            captions=np.asarray(captions))
        if mode == "cfg":
          n = min(int(e.grid_images), len(images))
          _save_grid(images[:n], self.path(f"samples_{split}.png"), int(e.grid_columns),
                     int(self.config.png_scale))
          split_res["grid_captions"] = captions[:n]
        self.log("samples", f"{split} {mode}: " + _acc_line(split_res[mode]))
      result[split] = split_res
    with s.unlocked():
      s.guidance_scale, s.sr_guidance_scale = guided
    seconds = time.perf_counter() - t
    self.finish("samples", seconds, **result)
    self.log("samples", f"done in {seconds:.0f} s")

  def edits(self) -> None:
    import numpy as np
    from muse_jax.data import shapes
    from muse_jax.evaluation import detector
    from muse_jax.sampling import editing
    if self.done("edits"):
      self.log("edits", "finished already; skipping")
      return
    pipe = self.load_pipeline()
    ed = self.config.edits
    size = pipe.image_size
    seed = int(self.config.seed)
    self.log("edits", f"inpainting, outpainting and a mask-free edit "
             f"({pipe.sampling.editing.mask_free_iterations} iterations) at {size}px")
    t = time.perf_counter()
    result = {}

    def pick(pred):
      start = int(self.cfgs["precompute"].data.shapes.num_train) + 10_000
      for i in range(start, start + 5000):
        ex = shapes.generate(i, "train", seed, size)
        if pred(ex.scene):
          return ex
      raise RuntimeError("no shapes example matches the edit's scene filter")

    def other_group(g):
      for colour in shapes.COLOURS:
        for shape in shapes.SHAPES:
          if colour != g.colour and shape != g.shape and \
             (colour, shape) not in shapes.HELDOUT_PAIRS:
            return shapes.Group(1, colour, shape)
      raise AssertionError

    def record(name, ex, prompt, out_image, mask=None):
      img = _to_uint8(out_image[None])[0]
      panels = [ex.image] + ([_mask_view(ex.image, mask)] if mask is not None else []) + [img]
      _save_row(panels, self.path(f"{name}.png"), int(ed.png_scale))
      score = {k: bool(v) for k, v in detector.score(img, prompt).items()}
      result[name] = {"source_caption": ex.caption, "prompt": prompt, "detector": score}
      self.log("edits", f"{name}: {ex.caption!r} -> {prompt!r}; detector: "
               + " ".join(f"{k}={'ok' if v else 'no'}" for k, v in score.items()))

    # Inpainting: one group on the left; regenerate the right half with a second group.
    ex = pick(lambda sc: len(sc.groups) == 1 and sc.position == "left")
    g = ex.scene.groups[0]
    prompt = shapes.scene_to_caption(shapes.Scene((g, other_group(g)), relation="left of"))
    mask = np.zeros((size, size), bool)
    mask[:, size // 2:] = True
    out = pipe.inpaint(ex.image, mask, [prompt], seed=seed)
    record("inpaint", ex, prompt, out.images[0], mask)

    # Outpainting: keep the centre, generate the border with a group above the kept one.
    ex = pick(lambda sc: len(sc.groups) == 1 and sc.position == "center"
              and sc.groups[0].count == 1)
    g = ex.scene.groups[0]
    prompt = shapes.scene_to_caption(shapes.Scene((other_group(g), g), relation="above"))
    q = size // 4
    box = (q, q, size - q, size - q)
    out = pipe.outpaint(ex.image, box, [prompt], seed=seed)
    record("outpaint", ex, prompt, out.images[0],
           np.asarray(editing.outpaint_pixel_mask(size, size, box)))

    # Mask-free: change the colour of a single group.
    ex = pick(lambda sc: len(sc.groups) == 1)
    g = ex.scene.groups[0]
    colour = next(c for c in shapes.COLOURS if c != g.colour
                  and (c, g.shape) not in shapes.HELDOUT_PAIRS)
    new = shapes.Scene((shapes.Group(g.count, colour, g.shape),), position=ex.scene.position)
    prompt = shapes.scene_to_caption(new)
    out = pipe.mask_free_edit(ex.image, [prompt], seed=seed)
    record("maskfree", ex, prompt, out.images[0])

    seconds = time.perf_counter() - t
    self.finish("edits", seconds, **result)
    self.log("edits", f"done in {seconds:.0f} s")

  def report(self) -> dict:
    st = self.state["stages"]
    samples = st.get("samples", {})
    accuracy, reference = {}, {}
    for split in SPLITS:
      if split in samples:
        accuracy[split] = {m: samples[split][m] for m in GUIDANCE}
        reference[split] = {k: samples[split][k] for k in ("dataset_images",
                                                           "tokenizer_reconstructions")}
    metrics = {
        "accuracy": accuracy,
        "reference": reference,
        "guidance_scale": {"base": samples.get("guidance_scale"),
                           "sr": samples.get("sr_guidance_scale")},
        "samples": {split: {"grid": f"samples_{split}.png",
                            "grid_captions": samples[split].get("grid_captions", []),
                            "captions": samples[split]["captions"]}
                    for split in SPLITS if split in samples},
        "edits": {k: {**v, "image": f"{k}.png"} for k, v in st.get("edits", {}).items()
                  if isinstance(v, dict)},
        "training": {name: {k: v for k, v in st.get(name, {}).items()
                            if k.startswith("loss") or k.startswith("eval") or k == "steps"}
                     for name in ("tokenizer", "base", "sr")},
        "stage_seconds": {name: st[name]["seconds"] for name in STAGES if name in st},
        "total_seconds": round(sum(st[name]["seconds"] for name in STAGES if name in st), 2),
        "command": "python -m muse_jax.demo " + " ".join(self.argv[1:]),
        "stage_commands": {
            "tokenizer": "python -m muse_jax.train --config=<configs.tokenizer> "
                         f"--workdir={self.path('tokenizer')}",
            "precompute": "python -m muse_jax.precompute --config=<configs.precompute> "
                          f"--workdir={self.path('precompute')}",
            "base": f"python -m muse_jax.train --config=<configs.base> "
                    f"--workdir={self.path('base')}",
            "sr": f"python -m muse_jax.train --config=<configs.sr> --workdir={self.path('sr')}",
        },
        "configs": {"demo": json.loads(self.config.to_json_best_effort()),
                    **{k: json.loads(v.to_json_best_effort()) for k, v in self.cfgs.items()}},
    }
    t = time.perf_counter()
    tmp = self.path(METRICS_FILE + f".tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
      json.dump(metrics, fh, indent=1)
      fh.write("\n")
    os.replace(tmp, self.path(METRICS_FILE))
    self.finish("report", time.perf_counter() - t)
    lines = [f"{'':22s}" + "".join(f"{m:>10s}" for m in ("count", "colour", "shape", "position",
                                                          "overall"))]
    for split in accuracy:
      for mode in GUIDANCE:
        r = accuracy[split][mode]
        lines.append(f"{split + ' ' + mode:22s}" + "".join(
            f"{100 * r[m]:9.1f}%" for m in ("count", "colour", "shape", "position", "overall")))
    self.log("report", f"wrote {self.path(METRICS_FILE)}; stage seconds "
             + ", ".join(f"{k} {v:.0f}" for k, v in metrics["stage_seconds"].items())
             + "\n" + "\n".join(lines))
    return metrics


# --------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------


def _copy(cfg):
  import ml_collections
  return ml_collections.ConfigDict(cfg.to_dict())


def _loss_summary(workdir: str) -> dict:
  """First and last training loss (and the last eval loss) from WORKDIR/metrics.jsonl."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  first = last = evl = None
  with open(path) as fh:
    for line in fh:
      rec = json.loads(line) if line.strip() else {}
      if "loss" in rec:
        first = rec if first is None else first
        last = rec
      if "eval_loss" in rec:
        evl = rec
  out = {}
  if first is not None:
    out.update(loss_first=first["loss"], loss_last=last["loss"], loss_last_step=last["step"])
    for k in ("rec_loss", "psnr", "codebook_perplexity"):
      if k in last:
        out[f"loss_last_{k}"] = last[k]
  if evl is not None:
    out["eval_loss"] = evl["eval_loss"]
  return out


def _generate_batched(pipe, captions, batch: int, seed: int):
  import numpy as np
  out = []
  for i in range(0, len(captions), batch):
    chunk = captions[i:i + batch]
    pad = batch - len(chunk)  # one compiled shape for every call
    res = pipe.generate(chunk + [chunk[-1]] * pad, seed=seed + i)
    out.append(res.images[:len(chunk)])
  return np.concatenate(out)


def _to_uint8(images):
  import numpy as np
  return np.round(np.clip(np.asarray(images, np.float32), 0, 1) * 255).astype(np.uint8)


def _acc_line(r: dict) -> str:
  return " ".join(f"{k} {100 * r[k]:.1f}%" for k in ("count", "colour", "shape", "position",
                                                      "overall"))


def _mask_view(image, mask):
  """The input with the regenerated region (mask True) shown in mid-grey."""
  import numpy as np
  out = image.copy()
  out[np.asarray(mask, bool)] = 128
  return out


def _save_row(panels, path: str, scale: int, gap: int = 2) -> None:
  import numpy as np
  from PIL import Image
  h, w = panels[0].shape[:2]
  canvas = np.full((h, len(panels) * (w + gap) - gap, 3), 255, np.uint8)
  for i, p in enumerate(panels):
    canvas[:, i * (w + gap):i * (w + gap) + w] = p
  im = Image.fromarray(canvas)
  im.resize((im.width * scale, im.height * scale), Image.NEAREST).save(path)


def _save_grid(images, path: str, columns: int, scale: int, gap: int = 2) -> None:
  import numpy as np
  from PIL import Image
  n, h, w = images.shape[:3]
  cols = min(columns, n)
  rows = -(-n // cols)
  canvas = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
  for i, img in enumerate(images):
    r, c = divmod(i, cols)
    canvas[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = img
  im = Image.fromarray(canvas)
  im.resize((im.width * scale, im.height * scale), Image.NEAREST).save(path)


# --------------------------------------------------------------------------------------------
# Entry point.
# --------------------------------------------------------------------------------------------

def define_flags():
  config_flags.DEFINE_config_file("config", None, "Path to a demo config: configs/demo_cpu.py "
                                  "(2 CPU cores, <= 15 min) or configs/demo_gpu.py (one H200).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Output directory (PNGs, metrics.json, stage workdirs); "
                      "rerun with the same one to resume.")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
    sys.exit(2)
  FLAGS = flags.FLAGS
  logging.getLogger("absl").setLevel(logging.WARNING)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  from muse_jax.cli import run_or_exit
  from muse_jax.sampling.checkpoints import MissingCheckpoint
  run_or_exit(lambda: Demo(FLAGS.config, FLAGS.workdir, argv=sys.argv).run(),
              user_errors=(MissingCheckpoint,))


if __name__ == "__main__":
  define_flags()  # here, not at import: tests import this module beside other entry points
  app.run(main)
