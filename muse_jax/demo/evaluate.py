"""Demo stages 5 and 6: samples scored by the shapes detector, and the three edits.

`run_samples(demo)`: for `eval.num_captions` train-like and as many held-out captions, the
detector's accuracy on the dataset images, on their tokenizer reconstructions (the ceilings)
and on text-to-image samples with and without classifier-free guidance (also per number of
objects in the caption, 1-8, and per held-out colour-shape pair); PNG grids and .npz. With
`eval.validation_captions`, first the guidance settings (the config's, none,
`eval.guidance_sweep`) are scored on that separate validation set of train-split scenes, and
the best is chosen there, never on the evaluation captions (`eval.use_chosen_guidance`: the
evaluation samples then use it); likewise the sampling temperature (`eval.temperature_sweep`,
`eval.use_chosen_temperature`; muse_jax.demo.validation).
`run_edits(demo)`: one inpainting, one outpainting and one mask-free edit of dataset images.
"""
from __future__ import annotations

import time

import numpy as np

from muse_jax.data.shapes import dataset as shapes, grammar
from muse_jax.demo import images as I
from muse_jax.demo.constants import GUIDANCE, SPLITS, acc_line, grid_name
from muse_jax.demo.validation import (headline_guidance, headline_temperature,
                                      score_validation)
from muse_jax.evaluation import compositional, detector
from muse_jax.sampling import editing
from muse_jax.sampling.image_io import save_grid


def evaluate_breakdowns(images, captions) -> tuple[dict, dict, dict]:
  """Detector accuracy of `images` against `captions`, overall, per number of objects and per
  held-out pair.

  Returns (overall, by_objects, by_heldout_pair): `overall` is compositional.evaluate's dict;
  `by_objects` maps the caption's total object count ('1'..'8', over all its groups) to the
  same dict for those captions; `by_heldout_pair` maps each held-out colour-shape pair
  ('yellow square') that some caption has to the same dict for the captions that have it (a
  caption of two held-out pairs counts in both; {} for train-split captions). Each image is
  read once.
  """
  captions = list(captions)
  if len(images) != len(captions) or not captions:
    raise ValueError(f"got {len(images)} images for {len(captions)} captions")
  scenes = [grammar.parse_caption(c) for c in captions]
  rows = compositional.score_scenes(images, scenes)

  def mean(idx):
    out = {m: sum(bool(rows[i][m]) for i in idx) / len(idx) for m in compositional.METRICS}
    out["num_examples"] = len(idx)
    return out

  by, by_pair = {}, {}
  for i, sc in enumerate(scenes):
    by.setdefault(sc.num_objects, []).append(i)
    for pair in {g.pair for g in sc.groups} & shapes.HELDOUT_PAIRS:
      by_pair.setdefault(" ".join(pair), []).append(i)
  return (mean(range(len(rows))), {str(n): mean(idx) for n, idx in sorted(by.items())},
          {p: mean(idx) for p, idx in sorted(by_pair.items())})


def run_samples(demo) -> None:
  if demo.done("samples"):
    demo.log("samples", "finished already; skipping")
    return
  e = demo.config.eval
  pipe = demo.load_pipeline()
  s = pipe.sampling
  default = (float(s.guidance_scale), float(s.sr_guidance_scale))
  default_t = float(s.temperature)

  def sample(captions, scales, temperature):
    with s.unlocked():
      s.guidance_scale, s.sr_guidance_scale = scales
      s.temperature = temperature
    return I.to_uint8(I.generate_batched(pipe, captions, int(e.batch_size),
                                         int(demo.config.seed)))

  t = time.perf_counter()
  validation = (score_validation(demo, sample, default, default_t)
                if int(e.validation_captions) else None)
  guided, chosen = headline_guidance(default, validation, bool(e.use_chosen_guidance))
  temperature, t_chosen = headline_temperature(default_t, validation,
                                               bool(e.use_chosen_temperature))
  demo.log("samples", f"{e.num_captions} train-like + {e.num_captions} held-out captions, "
           f"with CFG (guidance {guided[0]:g}/{guided[1]:g}, "
           + ("chosen on the validation captions" if chosen else "the config's")
           + f") and without, temperature {temperature:g} ("
           + ("chosen on the validation captions" if t_chosen else "the config's")
           + f"); {s.base_steps} base + {s.sr_steps} SR steps; {pipe.image_size}px")
  result = {"guidance_scale": guided[0], "sr_guidance_scale": guided[1],
            "guidance_chosen_on_validation": chosen, "temperature": temperature,
            "temperature_chosen_on_validation": t_chosen}
  if validation:
    result["validation"] = validation
  for split in SPLITS:
    examples = demo.eval_captions(split)
    captions = [ex.caption for ex in examples]
    real = np.stack([ex.image for ex in examples])
    rec = I.to_uint8(pipe.decode_tokens(*pipe.encode_image(real)))
    split_res = {
        "captions": captions,
        "dataset_images": compositional.evaluate(real, captions),
        "tokenizer_reconstructions": compositional.evaluate(rec, captions),
    }
    n_grid = min(int(e.grid_images), len(captions))
    split_res["grid_captions"] = captions[:n_grid]
    demo.log("samples", f"{split} tokenizer reconstructions: "
             + acc_line(split_res["tokenizer_reconstructions"]))
    for mode in GUIDANCE:
      images = sample(captions, guided if mode == "cfg" else (0.0, 0.0), temperature)
      (split_res[mode], split_res[f"{mode}_by_objects"],
       split_res[f"{mode}_by_heldout_pair"]) = evaluate_breakdowns(images, captions)
      np.savez_compressed(demo.path(f"samples_{split}_{mode}.npz"), images=images,
                          captions=np.asarray(captions))
      save_grid(images[:n_grid], demo.path(grid_name(split, mode)), int(e.grid_columns),
                int(demo.config.png_scale))
      demo.log("samples", f"{split} {mode}: " + acc_line(split_res[mode]))
    result[split] = split_res
  with s.unlocked():
    s.guidance_scale, s.sr_guidance_scale = default
    s.temperature = default_t
  seconds = time.perf_counter() - t
  demo.finish("samples", seconds, **result)
  demo.log("samples", f"done in {seconds:.0f} s")


def run_edits(demo) -> None:
  if demo.done("edits"):
    demo.log("edits", "finished already; skipping")
    return
  pipe = demo.load_pipeline()
  ed = demo.config.edits
  size = pipe.image_size
  seed = int(demo.config.seed)
  demo.log("edits", f"inpainting, outpainting and a mask-free edit "
           f"({pipe.sampling.editing.mask_free_iterations} iterations) at {size}px")
  t = time.perf_counter()
  result = {}

  def pick(pred):
    start = int(demo.cfgs["precompute"].data.shapes.num_train) + 10_000
    for i in range(start, start + 5000):
      ex = demo.scene(i, "train", seed)
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
    img = I.to_uint8(out_image[None])[0]
    panels = [ex.image] + ([I.mask_view(ex.image, mask)] if mask is not None else []) + [img]
    I.save_row(panels, demo.path(f"{name}.png"), int(ed.png_scale))
    score = {k: bool(v) for k, v in detector.score(img, prompt).items()}
    result[name] = {"source_caption": ex.caption, "prompt": prompt, "detector": score}
    demo.log("edits", f"{name}: {ex.caption!r} -> {prompt!r}; detector: "
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
  demo.finish("edits", seconds, **result)
  demo.log("edits", f"done in {seconds:.0f} s")
