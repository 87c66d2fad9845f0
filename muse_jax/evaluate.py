r"""Evaluate text-to-image samples: FID, CLIP score and compositional accuracy (shapes captions).

  python -m muse_jax.evaluate --base=RUNS/base [--sr=RUNS/sr] --captions=CAPTIONS.txt \
      --out=EVAL --metrics=fid,clip,compositional --reference_stats=REF.npz \
      [--inception_weights=pt_inception.safetensors --inception_variant=fid] \
      [--clip_weights=clip-vit-base-patch32/] [--batch_size=32 --seed=0 --num=N]
  python -m muse_jax.evaluate --config=SAMPLING_CONFIG [--workdir=RUNS] --captions=... --out=...
  python -m muse_jax.evaluate --images=DIR_OR_NPZ --captions=... --out=... --metrics=...
  python -m muse_jax.evaluate --save_stats=REF.npz --reference_images=DIR [--reference_size=256]

Captions (--captions, in a fixed order; caption i counts from 0; --num takes the first N):
  a text file, one per line (blank lines skipped); COCO captions JSON (captions_val2014.json:
  the annotation with the smallest id of each image, images by increasing image_id); TFRecord
  files with a `caption` bytes feature (precompute shards); a folder of images with sidecar
  .txt captions; webdataset tar shards or parquet files (the training readers); a prepared
  TFDS dataset, tfds:NAME[:SPLIT] from --tfds_data_dir with --caption_key naming the text
  feature (tfds:coco_captions:val --caption_key=captions/text), in stored order. The format is
  chosen from the name (--captions_format overrides it). Images come from one of:
  --base/--sr (each stage's workdir; text encoder and tokenizers from the base stage's
    precompute, as `muse_jax.sample --base`), or --config (a sampling config; stages with an
    empty workdir are read from --workdir/<stage>): caption i is sampled with the key
    fold_in(key(seed), i), so image i is the same in every run and after a resume;
  --images=DIR: the image of caption i is the file named i with an image extension (leading
    zeros allowed: 000007.png); or --images=FILE.npz with an array `images` [N, H, W, 3] (uint8,
    or float in [0, 1]) whose row i goes with caption i.
Images are scored as 8-bit RGB of one size.

Metrics (docs/evaluation.md):
  fid            Inception-v3 pool features against --reference_stats (a .npz written by
                 --save_stats or muse_jax.evaluation.fid.save_stats, or pytorch-fid's mu/sigma
                 file) or --reference_images=DIR (statistics computed once, saved in
                 OUT/reference_stats.npz). Without --inception_weights the network has random
                 weights: "random weights: not comparable with published FID".
  clip           100 * mean(max(cos, 0)) and the mean raw cosine (Muse's 0.32 scale) of CLIP
                 image and caption embeddings; --clip_weights: a Hugging Face CLIP directory
                 (model.safetensors, config.json, vocab.json, merges.txt). Without it: random
                 weights of --clip_model.
  compositional  the shapes detector's accuracy (count, colour, shape, position, overall);
                 every caption must be in the shapes grammar.

Per step: STEP is --step, by default the base stage's checkpoint step (0 with --images); the
checkpoints of one run can be evaluated into one OUT, each keeping its own files.
Resumable: images are processed in chunks of --chunk_size; after each chunk the statistics are
saved to OUT/state/STEP.npz, and rerunning the same command continues after the last saved
chunk (the result equals an uninterrupted run's). Writes OUT/eval/STEP.json (each metric with
its counts and networks), OUT/grid/STEP.png (the first --grid images), TensorBoard scalars and
the grid in OUT/tensorboard (and OUT/metrics.jsonl) at STEP, and, with --save_images,
OUT/images/STEP/.

Devices and processes: every batch is split over all devices of all processes (--batch_size
must be a multiple of their number); each process samples and scores its part, process 0
gathers the results and writes OUT. Multi-process runs take the flags of muse_jax.train
(--coordinator_address, --num_processes, --process_id; launch/local.py on one machine). The
number of devices and processes changes image i's tokens not at all, its pixels and the
figures only in float round-off; a run can resume with another number of them.

Exit status: 0 done (or stopped by --max_chunks; rerun to continue); 2 bad flags (e.g. a
--batch_size that does not split over the devices), captions, images or weight files, or OUT
holding another evaluation; 4 a stage has no checkpoint.
"""
import json
import logging
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from muse_jax import paths
from muse_jax.configs.cli_flags import parse_flags
from muse_jax.sampling import chain  # light: no JAX, so --help and path checks stay fast
from muse_jax.parallel import distributed

config_flags.DEFINE_config_file("config", None, "Sampling config (e.g. configs/pipeline_tiny.py)"
                                "; or use --base, or score --images.", lock_config=True)
flags.DEFINE_string("workdir", None, "With --config: RUNS, whose base/, sr/, vq_lo/, vq_hi/ are "
                    "the stage workdirs of stages with an empty workdir.")
chain.define_stage_flags(flags, "The base stage's workdir (or export): sample without a "
                         "config file.")
flags.DEFINE_string("images", None, "Score these images instead of sampling: a folder with "
                    "caption i's image named i.png / 000i.png (.jpg, .jpeg, .webp, .bmp), or a "
                    ".npz with `images` [N, H, W, 3].")
flags.DEFINE_string("captions", None, "Captions: a text file (one per line), COCO captions "
                    ".json, TFRecord files, an image folder with .txt captions, webdataset "
                    ".tar shards or .parquet files (paths, globs or brace patterns), or a "
                    "prepared TFDS dataset, tfds:NAME[:SPLIT].")
flags.DEFINE_enum("captions_format", "auto", ["auto", "text", "coco", "tfrecord", "folder",
                                              "webdataset", "parquet", "tfds"],
                  "Format of --captions (auto: from its name; tfds: names starting tfds:).")
flags.DEFINE_string("caption_key", "caption", "The caption feature / JSON field / column of "
                    "TFRecord, webdataset, parquet and TFDS captions (TFDS: nested with / or ., "
                    "e.g. captions/text).")
flags.DEFINE_string("tfds_data_dir", None, "With --captions=tfds:NAME[:SPLIT]: the TFDS data "
                    "directory of the prepared dataset (default: TFDS's own).")
flags.DEFINE_string("out", None, "Output directory (eval/STEP.json, grid/STEP.png, "
                    "state/STEP.npz, tensorboard/).")
flags.DEFINE_integer("step", None, "The step evaluated: names OUT's per-step files and places "
                     "the TensorBoard scalars and metrics.jsonl record (default: the base "
                     "stage's checkpoint step; 0 with --images).")
flags.DEFINE_boolean("tensorboard", True, "Write the metrics and the grid to OUT/tensorboard.")
flags.DEFINE_string("metrics", "fid,clip", "Comma-separated: fid, clip, compositional.")
flags.DEFINE_string("reference_stats", None, "FID reference statistics (.npz).")
flags.DEFINE_string("reference_images", None, "FID reference image folder (every image file, "
                    "name order); its statistics are computed once.")
flags.DEFINE_integer("reference_size", None, "Center-crop and resize reference images to this "
                     "square size (bicubic); needed when their sizes differ.")
flags.DEFINE_string("save_stats", None, "Only write the FID statistics of --reference_images "
                    "to this .npz and exit.")
flags.DEFINE_string("inception_weights", None, "Inception-v3 safetensors (torchvision layout; "
                    "tools/pth_to_safetensors.py converts pytorch-fid's .pth). Unset: random.")
flags.DEFINE_enum("inception_variant", "fid", ["fid", "torchvision"], "fid: pytorch-fid's "
                  "network (TensorFlow FID); torchvision: torchvision's inception_v3.")
flags.DEFINE_integer("inception_size", 299, "Inception input size. FID is defined at 299; "
                     "smaller (>= 75) only for quick smoke tests (reported as not comparable).")
flags.DEFINE_string("clip_weights", None, "Hugging Face CLIP directory or its .safetensors "
                    "file (config.json, vocab.json, merges.txt next to it). Unset: random.")
flags.DEFINE_enum("clip_model", "vit_b32", ["vit_b32", "vit_l14", "tiny"], "Architecture of "
                  "the random CLIP when --clip_weights is unset.")
flags.DEFINE_integer("batch_size", 32, "Images per batch, over all devices and processes (a "
                     "multiple of their number).")
flags.DEFINE_integer("chunk_size", 0, "Images per saved chunk, a multiple of --batch_size "
                     "(0: 8 batches).")
flags.DEFINE_integer("seed", None, "Sampling seed (default: the config's seed).")
flags.DEFINE_integer("num", None, "Evaluate the first N captions only.")
flags.DEFINE_float("guidance", None, "Guidance scale of both stages (sampling.guidance_scale).")
flags.DEFINE_integer("steps", None, "Base decoding steps (sampling.base_steps).")
flags.DEFINE_integer("sr_steps", None, "SR decoding steps (sampling.sr_steps).")
flags.DEFINE_integer("grid", 16, "Images in OUT/grid/STEP.png, the first ones (at most one "
                     "chunk; 0: none).")
flags.DEFINE_boolean("save_images", False, "Also write every image to "
                     "OUT/images/STEP/NNNNNN.png.")
flags.DEFINE_integer("max_chunks", None, "Stop after this many chunks (state saved; rerun the "
                     "same command to continue).")
flags.DEFINE_boolean("overwrite", False, "Discard OUT's saved progress and report of this "
                     "step and start over.")
distributed.define_flags()
flags.adopt_module_key_flags(distributed)
FLAGS = flags.FLAGS


class UsageError(ValueError):
  pass


def parse_metrics(text: str) -> tuple[str, ...]:
  from muse_jax.evaluation.runner import METRICS
  names = tuple(m.strip() for m in text.split(",") if m.strip())
  bad = [m for m in names if m not in METRICS]
  if not names or bad:
    raise UsageError(f"--metrics={text!r}: choose from {', '.join(METRICS)}")
  return tuple(m for m in METRICS if m in names)


def check_flags(metrics):
  sources = [n for n in ("config", "base", "images") if getattr(FLAGS, n) is not None]
  if len(sources) != 1:
    raise UsageError("give one of --config (with --workdir), --base (with --sr) or --images")
  for name in ("captions", "out"):
    if not getattr(FLAGS, name):
      raise UsageError(f"give --{name}")
  if "fid" in metrics and not (FLAGS.reference_stats or FLAGS.reference_images):
    raise UsageError("--metrics=fid needs --reference_stats=REF.npz or --reference_images=DIR")
  if FLAGS.reference_stats and FLAGS.reference_images:
    raise UsageError("give --reference_stats or --reference_images, not both")
  if FLAGS.batch_size < 1:
    raise UsageError(f"--batch_size={FLAGS.batch_size} must be >= 1")
  for name in ("grid", "max_chunks", "step"):
    value, least = getattr(FLAGS, name), 1 if name == "max_chunks" else 0
    if value is not None and value < least:
      raise UsageError(f"--{name}={value} must be >= {least}")
  if FLAGS.chunk_size < 0 or FLAGS.chunk_size % FLAGS.batch_size:
    raise UsageError(f"--chunk_size={FLAGS.chunk_size} must be a multiple of --batch_size="
                     f"{FLAGS.batch_size} (0: 8 batches)")


def check_captions(captions, metrics):
  if "compositional" in metrics:
    from muse_jax.data.shapes.grammar import CaptionParseError, parse_caption
    for i, c in enumerate(captions):
      try:
        parse_caption(c)
      except CaptionParseError:
        raise UsageError(f"--metrics=compositional needs shapes captions; caption {i} "
                         f"({c!r}) is not in the shapes grammar") from None
  if "fid" in metrics and len(captions) < 2:
    raise UsageError("FID needs at least 2 images")


def sampling_config():
  """--config's sampling config, or one built from the --base chain; with the sampling flags."""
  if FLAGS.config is not None:
    config = FLAGS.config
  else:
    config = chain.pipeline_config(FLAGS.base, sr=FLAGS.sr, vq_lo=FLAGS.vq_lo,
                                   vq_hi=FLAGS.vq_hi, spiece_model=FLAGS.spiece_model)
  s = config.sampling
  if FLAGS.guidance is not None:
    s.guidance_scale = s.sr_guidance_scale = float(FLAGS.guidance)
  if FLAGS.steps is not None:
    s.base_steps = int(FLAGS.steps)
  if FLAGS.sr_steps is not None:
    s.sr_steps = int(FLAGS.sr_steps)
  return config


def sampling_source(captions, mesh):
  """(images_fn, identity entries, image size) of the cascade's samples."""
  import hashlib

  from muse_jax.evaluation.runner import cascade_images
  from muse_jax.sampling.pipeline import Pipeline
  config = sampling_config()
  seed = int(config.seed if FLAGS.seed is None else FLAGS.seed)
  pipe = Pipeline.from_config(config, FLAGS.workdir, mesh=mesh)
  text = config.to_json_best_effort(sort_keys=True)
  s = config.sampling
  identity = {"source": "cascade", "seed": seed,
              "sampling": {k: s[k] for k in ("base_steps", "sr_steps", "guidance_scale",
                                              "sr_guidance_scale", "negative_prompt")},
              "sampling_config_sha256": hashlib.sha256(text.encode()).hexdigest(),
              "stage_steps": {"base": pipe.base.step,
                              "sr": None if pipe.sr is None else pipe.sr.step}}
  return cascade_images(pipe, captions, seed), identity, (pipe.image_size,) * 2


def save_stats_only(mesh):
  """--save_stats: the FID statistics of --reference_images, written to a .npz."""
  from muse_jax.evaluation import devices, inputs, reference, runner, scorers
  if not FLAGS.reference_images:
    raise UsageError("--save_stats needs --reference_images=DIR")
  images = inputs.ImageSet.all_files(FLAGS.reference_images, FLAGS.reference_size)
  inception = scorers.load_inception(FLAGS.inception_weights, FLAGS.inception_variant,
                                     FLAGS.inception_size, mesh=mesh)
  stats = runner.image_stats(images, inception, FLAGS.batch_size)
  if not devices.is_main():
    return
  reference.save(FLAGS.save_stats, stats, reference.describe(images, inception))
  print(f"wrote FID statistics of {stats.count} images to {FLAGS.save_stats}"
        + (f" ({scorers.FID_RANDOM_NOTE})" if inception.info["random_weights"] else ""))


def image_source(captions, mesh):
  """(images_fn, identity entries, (height, width)) of --images or of the cascade."""
  from muse_jax.evaluation import inputs
  if FLAGS.images is None:
    return sampling_source(captions, mesh)
  images = inputs.ImageSet.for_captions(FLAGS.images, len(captions))
  return images.load, {"source": "images", "images": os.path.abspath(FLAGS.images),
                       "images_digest": images.digest()}, images.size


def networks(metrics, out, mesh, log):
  """(Inception scorer, CLIP scorer, FID reference statistics, their report entry). Every
  process computes --reference_images' statistics (process 0 saves them), so that none waits
  for another before the first batch."""
  from muse_jax.evaluation import devices, reference, scorers
  inception = clip = ref = ref_info = None
  if "fid" in metrics:
    inception = scorers.load_inception(FLAGS.inception_weights, FLAGS.inception_variant,
                                       FLAGS.inception_size, mesh=mesh)
    if FLAGS.reference_stats:
      ref, ref_info = reference.load(FLAGS.reference_stats, inception)
    else:
      ref, ref_info = reference.from_images(
          FLAGS.reference_images, FLAGS.reference_size, inception, FLAGS.batch_size,
          f"{out}/reference_stats.npz", log=log, write=devices.is_main())
  if "clip" in metrics:
    clip = scorers.load_clip(FLAGS.clip_weights, FLAGS.clip_model, mesh=mesh)
  return inception, clip, ref, ref_info


def _record_step(line: bytes):
  """The step of a metrics.jsonl line, or None (a line the reporter will set aside)."""
  try:
    return json.loads(line).get("step")
  except (ValueError, AttributeError):
    return None


def write_tensorboard(out, results, step):
  """The metrics as scalars and the grid as an image at `step` (OUT/tensorboard, through the
  training reporter, which also appends them to OUT/metrics.jsonl). Steps are evaluated in any
  order, so the records of other steps are all kept; an earlier record of this step (a rerun)
  is replaced."""
  import numpy as np
  from PIL import Image

  from muse_jax.evaluation import runner
  from muse_jax.training.reporting import Reporter
  scalars = runner.scalars(results)
  log = paths.resolve(out) / "metrics.jsonl"
  if log.exists():
    lines = [x for x in log.read_bytes().split(b"\n") if x.strip()]
    kept = [x for x in lines if _record_step(x) != step]
    if len(kept) != len(lines):
      paths.write_atomic(log, b"".join(x + b"\n" for x in kept))
  reporter = Reporter(out, total_steps=step, start_step=sys.maxsize, enabled=True,
                      tensorboard=FLAGS.tensorboard)
  try:
    reporter.record(step, scalars, prefix="eval/")
    reporter.scalars(step, scalars, prefix="eval/")
    grid = paths.resolve(runner.grid_path(out, step))
    if FLAGS.grid and grid.exists():
      with Image.open(grid) as im:
        reporter.images(step, "eval/samples", np.asarray(im.convert("RGB"), np.float32) / 255)
  finally:
    reporter.close()


def run():
  import jax

  from muse_jax.evaluation import captions as caption_sets
  from muse_jax.evaluation import devices, inputs, runner, scorers
  distributed.initialize_from_flags()
  main = devices.is_main()
  say = (lambda s: print(s, flush=True)) if main else (lambda s: None)
  metrics = parse_metrics(FLAGS.metrics)
  devices.check_batch(FLAGS.batch_size)
  mesh = devices.local_mesh()
  if FLAGS.save_stats:
    return save_stats_only(mesh)
  check_flags(metrics)
  all_captions = caption_sets.read(FLAGS.captions, FLAGS.captions_format, FLAGS.caption_key,
                                   FLAGS.tfds_data_dir)
  captions = inputs.first(all_captions, FLAGS.num, FLAGS.captions)
  check_captions(captions, metrics)
  out, chunk = FLAGS.out, FLAGS.chunk_size or 8 * FLAGS.batch_size
  t0 = time.perf_counter()
  images_fn, source, size = image_source(captions, mesh)   # cheap checks, checkpoints first
  step = FLAGS.step
  if step is None:
    step = (source.get("stage_steps") or {}).get("base", 0)
  step = int(step)
  if main:
    paths.resolve(out).mkdir(parents=True, exist_ok=True)
    if FLAGS.overwrite:
      for path in (runner.state_path(out, step), runner.report_path(out, step)):
        paths.resolve(path).unlink(missing_ok=True)
  inception, clip, ref, ref_info = networks(metrics, out, mesh, say)
  identity = {**source, "captions_sha256": inputs.captions_digest(all_captions),
              "inception": None if inception is None else scorers.fingerprint(inception.info),
              "clip": None if clip is None else scorers.fingerprint(clip.info)}
  ev = runner.Evaluation(out=out, captions=captions, metrics=metrics,
                         batch_size=FLAGS.batch_size, chunk_size=chunk, identity=identity,
                         inception=inception, clip=clip, grid=FLAGS.grid,
                         save_images=FLAGS.save_images, step=step)
  say(f"evaluating {', '.join(metrics)} at step {step} on {len(captions)} captions "
      f"({size[0]}x{size[1]} "
      f"images, batches of {FLAGS.batch_size} over {jax.device_count()} device(s) of "
      f"{jax.process_count()} process(es), chunks of {chunk}); set-up took "
      f"{time.perf_counter() - t0:.1f} s")
  acc = runner.run(ev, images_fn, log=say, max_chunks=FLAGS.max_chunks)
  if acc is None:
    say(f"stopped after --max_chunks={FLAGS.max_chunks} chunks; rerun the same command to "
        "continue")
    return
  if not main:
    return
  results = runner.summarize(ev, acc, ref, ref_info)
  captions_format = (caption_sets.detect(FLAGS.captions) if FLAGS.captions_format == "auto"
                     else FLAGS.captions_format)
  report = {"metrics": results, "num_images": len(captions), "image_size": list(size),
            "step": step,
            "captions": {"path": (FLAGS.captions if captions_format == "tfds"
                                  else str(paths.resolve(FLAGS.captions))),
                         "count": len(captions), "format": captions_format,
                         **({"tfds_data_dir": FLAGS.tfds_data_dir}
                            if captions_format == "tfds" else {})},
            "grid": {"path": f"grid/{step}.png" if FLAGS.grid else None,
                     "captions": captions[:min(FLAGS.grid, chunk)]},
            "setup": runner.identity(ev)}
  path = runner.write_report(out, step, report)
  write_tensorboard(out, results, step)
  for line in runner.summary_lines(results):
    print(line)
  print(f"wrote {path}" + (f" and TensorBoard scalars at step {step} to {out}/tensorboard"
                           if FLAGS.tensorboard else ""))


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
    sys.exit(2)
  logging.getLogger("absl").setLevel(logging.WARNING)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  from muse_jax.cli import run_or_exit
  from muse_jax.workdir.checkpoints import MissingCheckpoint

  def guarded():
    try:
      run()
    except MissingCheckpoint as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(4)

  run_or_exit(guarded, user_errors=(ValueError, FileNotFoundError))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
