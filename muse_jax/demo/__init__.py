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
                 captions) -> shards (muse_jax.precompute.run).             -> WORKDIR/precompute
  3. base        the base masked transformer on the low-res tokens.         -> WORKDIR/base
  4. sr          the super-resolution transformer (low-res -> high-res tokens). -> WORKDIR/sr
  5. samples     text-to-image (muse_jax.sampling.pipeline) for `eval.num_captions` new
                 train-like captions and as many held-out captions (colour-shape pairs never
                 seen in training), with and without classifier-free guidance; the detector
                 (muse_jax.evaluation) scores each image for count, colour, shape, position.
                 With `eval.validation_captions`, guidance (the config's, none and
                 `eval.guidance_sweep`), then temperature (`eval.temperature_sweep`), is
                 first scored and chosen on that many train-split captions of their own,
                 never on the evaluation captions (`eval.use_chosen_guidance` and
                 `eval.use_chosen_temperature` sample the evaluation at the choice).
  6. edits       one inpainting, one outpainting and one mask-free edit of dataset images.
  7. report      WORKDIR/metrics.json.

The text encoder is a randomly initialised tiny T5 (seeded, so precompute and sampling compute
the same deterministic random features of the caption tokens): the demo shows the system, not
T5's language knowledge. Real runs use T5-XXL weights (muse_jax/configs/common_t5.py).

Stage configs. The demo config holds one full training config per stage (`vqgan`, `precompute`,
`base`, `sr`: the same ConfigDicts `python -m muse_jax.train` / `muse_jax.precompute` take) plus
`sampling`, `eval` and `edits`. Keys that link the stages are filled in here and need no
setting: tokenizer weights/model/resolutions of precompute, data path, codebook size, token
grids and text width/length of base and SR (see `stage_configs`).

Writes to WORKDIR:
  samples_train.png, samples_heldout.png   grids of guided samples (captions, row by row, in
                                           metrics.json: samples.<split>.grid_captions)
  samples_train_no_cfg.png, ...heldout_no_cfg.png   the same captions sampled without CFG
  inpaint.png, outpaint.png, maskfree.png  input | mask (grey = regenerated) | output; input |
                                           output for the mask-free edit
  metrics.json     detector accuracy per attribute for {train, heldout} x {cfg, no_cfg}, the
                   validation captions' guidance and temperature settings and the choices, the
                   detector on the dataset images and on their tokenizer reconstructions (the
                   ceilings), first/last training losses, stage timings, command and configs
  tokenizer/ precompute/ base/ sr/         the stage workdirs (checkpoints, metrics.jsonl, ...);
                                           base/ and sr/ log the detector's accuracy on the
                                           evaluation captions every eval.samples.every steps
                                           (TensorBoard eval/compositional/<set>/<attribute>;
                                           metrics.json accuracy_curves)
  eval_captions/                           those captions, one file per split
  demo_state.json                          finished stages, their timings and results

Resuming. Rerunning the same command skips finished stages (a training stage is finished when
its newest checkpoint reached train.num_steps, precompute when its manifest exists, the others
when demo_state.json records them); an interrupted training stage resumes from its checkpoint
and an interrupted precompute skips its finished shards. A stage's timing counts every run
that worked on it: a run that stops inside a stage keeps the time it spent there. Raising a
stage's num_steps (with its train.schedule_steps: a run keeps its first schedule) and rerunning
continues that stage; downstream stages are not redone by themselves: delete their entries in
demo_state.json (or use a new workdir) after changing an earlier stage.

Exit status: 0 done; 2 bad config; 3 non-finite loss; 143 stopped by SIGTERM (rerun to resume).

Modules: constants.py (step names, files), stage_configs.py (linking the stage configs),
runner.py (`Demo`: state, training stages, precompute, the loaded cascade), evaluate.py
(samples + detector metrics, edits), report.py (metrics.json), images.py (PNG grids),
__main__.py (the command line).
"""
from muse_jax.demo.constants import GUIDANCE, METRICS_FILE, SPLITS, STATE_FILE, STEPS  # noqa: F401
from muse_jax.demo.runner import Demo  # noqa: F401
from muse_jax.demo.stage_configs import stage_configs  # noqa: F401
