r"""Sample or edit images with a trained Muse cascade (base -> SR -> VQ decode).

  python -m muse_jax.sample --base=RUNS/base [--sr=RUNS/sr] --prompt "a red cube" --out cube.png
  python -m muse_jax.sample --bundle=BUNDLE --prompt "a red cube" --out cube.png
  python -m muse_jax.sample --config=muse_jax/configs/common_pipeline.py --workdir=RUNS \
      --prompt "a red cube on a blue sphere" [--negative_prompt "blurry"] --out cube.png \
      [--seed=0 --num_images=4 --guidance=4 --steps=24 --sr_steps=8 --config.a.b=value ...]

With --base (no config file): each stage is read from its training workdir's config.json; the
text encoder, its sentencepiece model and the VQ tokenizers are the ones the base stage's
precompute used (its manifest.json), unless --vq_lo, --vq_hi or --spiece_model give others
(muse_jax/sampling/chain.py). The sampling settings are muse_jax/configs/common_sampling.py's.

With --bundle: a pipeline bundle (`python -m muse_jax.export --pipeline=BUNDLE ...`), with its
sampling defaults; every file's sha256 and every stage's keys and shapes are checked first.

With --config, the config's `pipeline` section names each stage's training config and workdir
(muse_jax/configs/common_pipeline.py); a stage with an empty workdir is read from RUNS/<stage>
(RUNS/base, RUNS/sr, RUNS/vq_lo, RUNS/vq_hi). Only the parameters of each checkpoint are
loaded (the EMA when there is one). Disable super-resolution with --config.pipeline.sr.config=''.

Editing (Muse Sec. 3.3), from --image (cropped to a square and resized to the output size):
  --edit=inpaint  --image IN.png --mask MASK.png    white mask pixels are regenerated
  --edit=outpaint --image IN.png --outpaint_pad=64  the image shrinks into the centre, leaving
                  a 64 px border (or TOP,LEFT,BOTTOM,RIGHT) to generate; or give --mask
  --edit=maskfree --image IN.png [--mask M.png]     resample 8% of the tokens per iteration
                  for 100 iterations towards the prompt (guidance 4, top-k 3; the
                  sampling.editing section); a mask limits which tokens may change

Several --prompt flags give one image each; --num_images repeats every prompt. One output image
is written to --out; several to OUT_0.png, OUT_1.png, ...

Exit status: 0 done; 2 bad flags or config, a path that does not exist, a bundle file or key
that does not match its manifest; 4 missing checkpoint (train that stage first).
"""
import logging
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from muse_jax import paths
from muse_jax.configs.cli_flags import parse_flags
from muse_jax.sampling import chain  # light: no JAX, so --help and path checks stay fast

config_flags.DEFINE_config_file("config", None, "Path to a sampling config, e.g. "
                                "muse_jax/configs/common_pipeline.py or configs/pipeline_tiny.py.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory whose base/, sr/, vq_lo/, vq_hi/ subdirectories "
                    "are the stage workdirs (for stages whose pipeline.<stage>.workdir is "
                    "empty).")
flags.DEFINE_multi_string("prompt", None, "Text prompt; repeat the flag for several images.")
flags.DEFINE_string("negative_prompt", None, "Replaces the null condition in classifier-free "
                    "guidance (default: sampling.negative_prompt, empty = null condition).")
flags.DEFINE_string("out", "sample.png", "Output PNG (OUT_<i>.png when several images).")
flags.DEFINE_integer("seed", None, "Random seed (default: config.seed).")
flags.DEFINE_integer("num_images", 1, "Images per prompt.")
flags.DEFINE_float("guidance", None, "Guidance scale t of both stages (sampling.guidance_scale "
                   "and sr_guidance_scale; 0 disables CFG).")
flags.DEFINE_integer("steps", None, "Base decoding steps (sampling.base_steps; Muse: 24).")
flags.DEFINE_integer("sr_steps", None, "SR decoding steps (sampling.sr_steps; Muse: 8).")
flags.DEFINE_enum("edit", None, ["inpaint", "outpaint", "maskfree"], "Edit --image instead of "
                  "generating from scratch.")
flags.DEFINE_string("image", None, "Input image for --edit.")
flags.DEFINE_string("mask", None, "Mask image for --edit (white = regenerate / editable).")
flags.DEFINE_string("outpaint_pad", None, "Border to generate for --edit=outpaint, in output "
                    "pixels: one value for all sides or TOP,LEFT,BOTTOM,RIGHT.")
chain.define_stage_flags(flags, "The base stage's training workdir (or export): sample "
                         "without a config file (instead of --config).")
flags.DEFINE_string("bundle", None, "A pipeline bundle (python -m muse_jax.export "
                    "--pipeline=DIR): sample from it, instead of --config or --base.")
FLAGS = flags.FLAGS

EXIT_USAGE = 2
EXIT_MISSING_CHECKPOINT = 4


class UsageError(ValueError):
  pass


def parse_pad(value: str, size: int) -> tuple[int, int, int, int]:
  """'P' or 'T,L,B,R' -> keep box (top, left, bottom, right) inside a size x size canvas."""
  try:
    parts = [int(v) for v in value.split(",")]
  except ValueError:
    raise UsageError(f"--outpaint_pad={value!r}: give one integer or TOP,LEFT,BOTTOM,RIGHT")
  if len(parts) == 1:
    parts = parts * 4
  if len(parts) != 4 or min(parts) < 0:
    raise UsageError(f"--outpaint_pad={value!r}: give one integer or four non-negative ones")
  top, left, bottom, right = parts
  box = (top, left, size - bottom, size - right)
  if box[2] <= box[0] or box[3] <= box[1]:
    raise UsageError(f"--outpaint_pad={value!r} leaves nothing of the {size}px image")
  return box


def outpaint_canvas(image, box):
  """The image resized into box on a mid-grey canvas of the image's size."""
  import numpy as np

  from muse_jax.sampling.image_io import resize_images
  size = image.shape[0]
  top, left, bottom, right = box
  canvas = np.full_like(image, 0.5)
  h, w = bottom - top, right - left
  if h == w:
    inner = resize_images(image[None], h)[0]
  else:
    import jax
    inner = np.clip(np.asarray(jax.image.resize(image, (h, w, 3), "linear", antialias=True)),
                    0, 1)
  canvas[top:bottom, left:right] = inner
  assert canvas.shape[0] == size
  return canvas


def apply_flags(s):
  """Copies the sampling flags into the `sampling` section (a locked ConfigDict: values only)."""
  if FLAGS.guidance is not None:
    s.guidance_scale = float(FLAGS.guidance)
    s.sr_guidance_scale = float(FLAGS.guidance)
  if FLAGS.steps is not None:
    s.base_steps = int(FLAGS.steps)
  if FLAGS.sr_steps is not None:
    s.sr_steps = int(FLAGS.sr_steps)
  if FLAGS.negative_prompt is not None:
    s.negative_prompt = FLAGS.negative_prompt


def check_flags():
  if not FLAGS.prompt:
    raise UsageError("give at least one --prompt")
  if FLAGS.num_images < 1:
    raise UsageError(f"--num_images={FLAGS.num_images} must be >= 1")
  if FLAGS.edit is None:
    for name in ("image", "mask", "outpaint_pad"):
      if getattr(FLAGS, name) is not None:
        raise UsageError(f"--{name} needs --edit=inpaint|outpaint|maskfree")
    return
  if not FLAGS.image:
    raise UsageError(f"--edit={FLAGS.edit} needs --image")
  if FLAGS.edit == "inpaint" and not FLAGS.mask:
    raise UsageError("--edit=inpaint needs --mask (white = regenerate)")
  if FLAGS.edit == "outpaint" and not (FLAGS.mask or FLAGS.outpaint_pad):
    raise UsageError("--edit=outpaint needs --outpaint_pad (or a --mask)")
  if FLAGS.edit != "outpaint" and FLAGS.outpaint_pad:
    raise UsageError("--outpaint_pad is only for --edit=outpaint")
  for name in ("image", "mask"):
    path = getattr(FLAGS, name)
    if path and not paths.resolve(path).is_file():
      raise UsageError(f"--{name}={path}: no such file")


def load_pipeline():
  """The pipeline of --config (with --workdir), of the --base chain of workdirs, or of
  --bundle."""
  given = [f"--{n}" for n in ("config", "base", "bundle") if getattr(FLAGS, n) is not None]
  if len(given) != 1:
    raise UsageError("give one of --config=FILE (with --workdir), --base=WORKDIR or "
                     f"--bundle=DIR{f' (not {given[0]} and {given[1]})' if given else ''}")
  if FLAGS.bundle is None:
    for name in ("sr", "vq_lo", "vq_hi", "spiece_model"):
      if getattr(FLAGS, name) and FLAGS.base is None:
        raise UsageError(f"--{name} goes with --base=WORKDIR")
  elif any(getattr(FLAGS, n) for n in ("sr", "vq_lo", "vq_hi", "spiece_model")):
    raise UsageError("a --bundle holds its stages: drop --sr, --vq_lo, --vq_hi, --spiece_model")
  chain.check_paths(base=FLAGS.base, sr=FLAGS.sr, vq_lo=FLAGS.vq_lo, vq_hi=FLAGS.vq_hi,
                    spiece_model=FLAGS.spiece_model, bundle=FLAGS.bundle)
  from muse_jax.sampling.pipeline import Pipeline  # imports JAX: after the quick checks
  if FLAGS.bundle is not None:
    pipe = Pipeline.from_bundle(FLAGS.bundle)
  else:
    config = FLAGS.config
    if FLAGS.base is not None:
      config = chain.pipeline_config(FLAGS.base, sr=FLAGS.sr, vq_lo=FLAGS.vq_lo,
                                     vq_hi=FLAGS.vq_hi, spiece_model=FLAGS.spiece_model)
    pipe = Pipeline.from_config(config, FLAGS.workdir)
  apply_flags(pipe.sampling)
  return pipe


def run():
  import numpy as np

  from muse_jax.sampling.image_io import load_image, load_mask, save_images
  check_flags()
  prompts = [p for p in FLAGS.prompt for _ in range(FLAGS.num_images)]
  t0 = time.perf_counter()
  pipe = load_pipeline()
  t_load = time.perf_counter() - t0
  seed = int(pipe.config.seed if FLAGS.seed is None else FLAGS.seed)
  size = pipe.image_size
  t0 = time.perf_counter()
  if FLAGS.edit is None:
    result = pipe.generate(prompts, seed=seed)
  else:
    image = load_image(FLAGS.image, size)
    mask = load_mask(FLAGS.mask, size) if FLAGS.mask else None
    images = np.repeat(image[None], len(prompts), axis=0)
    if FLAGS.edit == "inpaint":
      result = pipe.inpaint(images, mask, prompts, seed=seed)
    elif FLAGS.edit == "outpaint":
      if mask is None:
        box = parse_pad(FLAGS.outpaint_pad, size)
        images = np.repeat(outpaint_canvas(image, box)[None], len(prompts), axis=0)
        result = pipe.outpaint(images, box, prompts, seed=seed)
      else:
        result = pipe.inpaint(images, mask, prompts, seed=seed)
    else:
      result = pipe.mask_free_edit(images, prompts, mask=mask, seed=seed)
  t_run = time.perf_counter() - t0
  written = save_images(result.images, FLAGS.out)
  what = FLAGS.edit or "generate"
  print(f"{what}: wrote {', '.join(written)} ({size}x{size}) in {t_run:.1f} s "
        f"(loading {t_load:.1f} s; base step {pipe.base.step}"
        f"{'' if pipe.sr is None else f', sr step {pipe.sr.step}'})")
  return written


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}; quote the prompt: --prompt \"...\"",
          file=sys.stderr)
    sys.exit(EXIT_USAGE)
  logging.getLogger("absl").setLevel(logging.WARNING)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU" notices
  try:
    run()
  except (UsageError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    # Imported here: checkpoints imports JAX, which a bad flag need not wait for.
    from muse_jax.workdir.checkpoints import MissingCheckpoint
    sys.exit(EXIT_MISSING_CHECKPOINT if isinstance(e, MissingCheckpoint) else EXIT_USAGE)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
