"""The end-to-end demo on the shapes dataset, sized for 2 CPU cores (<= 15 minutes).

COMMAND: python -m muse_jax.demo --config=configs/demo_cpu.py --workdir=demo_out
         (= `make demo`; its time and results on 2 cores: docs/demo.md)
Trains an f4 VQGAN tokenizer on 64px shapes images, precomputes tokens (32px -> 8x8 for the
base stage, 64px -> 16x16 for SR) and random tiny-T5 caption embeddings, trains the base and
SR transformers, then writes demo_out/samples_train.png, samples_heldout.png, inpaint.png,
outpaint.png, maskfree.png and metrics.json (detector accuracy per attribute on train-like and
held-out captions, with and without CFG; stage timings; configs). Rerun to resume.

Sections: `vqgan`, `precompute`, `base`, `sr` are full stage configs (override any key, e.g.
--config.base.train.num_steps=600); the keys that link stages (tokenizer weights and
resolutions, data paths, codebook size, token grids, text width/length) are set by
muse_jax.demo. `sampling` is muse_jax/configs/common_sampling.py; `eval` and `edits` are the demo's.
"""
import ml_collections

from muse_jax.configs import (common, common_data, common_sampling, common_sr, common_t5,
                              common_vqgan)


def vqgan_config():
  """f4 tokenizer: 2x2 space-to-depth stem + two levels (32x32, 16x16), l2-normalised 8-dim codes.

  The patch stem keeps every conv at <= 32x32 with >= 32 channels, which XLA's CPU convolutions
  run far more efficiently than 16 channels at 64x64; l2-normalised codes (ViT-VQGAN) keep the
  512 codes in use and learn colours far sooner; batch 4 learns small shapes better than batch 8
  for about the same training time. 1300 steps: the reconstruction PSNR (`psnr` in
  WORKDIR/tokenizer/metrics.jsonl) has flattened by then, and the demo must fit 15 minutes. How
  well the detector reads the reconstructions: metrics.json of `make demo`; docs/demo.md.
  """
  c = common_vqgan.get_config()
  c.model = common_vqgan.vqgan_model(
      "tiny", patch_size=2, block_out_channels=(32, 64), latent_channels=8, codebook_size=512,
      codebook_norm="l2", norm_groups=8)
  c.discriminator = common_vqgan.discriminator(
      64, base_channels=8, channel_multipliers=(2, 2), max_channels=16, mbstd_group=2,
      dtype="float32")
  # L2: the few object pixels dominate the gradient (with L1 or L1+L2 the tokenizer first learns
  # to draw only background). disc_start_step beyond num_steps: no discriminator is compiled.
  c.loss.update(dict(reconstruction="l2", disc_start_step=1_000_000, perceptual_dtype="float32"))
  # No dead-code restarts: they keep all 512 codes alive, and the live codes then share out the
  # flat background, so the same background patch gets many ids (a much higher token entropy,
  # the log of `codebook_perplexity` in WORKDIR/tokenizer/metrics.jsonl; docs/experiments.md),
  # which the base and SR transformers cannot learn in the demo's budget.
  # Without restarts a few dozen codes stay in use and reconstructions read as well.
  c.quantizer.update(dict(usage_ema_decay=0.9, restart_every=0))
  c.optimizer.update(dict(learning_rate=2e-3, warmup_steps=10, weight_decay=0.0))
  c.disc_optimizer.update(dict(learning_rate=1e-3, warmup_steps=10, weight_decay=0.0))
  c.data.update(dict(source="shapes", image_size=64))
  c.train.update(dict(batch_size=4, num_steps=1300, log_every=100, eval_every=0,
                      image_grid_every=0))
  c.checkpoint.update(dict(every_steps=500, keep=1))
  return c


def precompute_config():
  c = ml_collections.ConfigDict()
  c.data = common_data.data_config()
  c.data.source = "shapes"
  # One group of at most two objects ("two red circles at the top"): at 64 px the shapes of
  # up to eight objects are a few pixels across, and the tokenizer's own reconstructions of
  # them read wrong far more often; with two groups the tiny SR stage must also bind each
  # shape word to its group, which it does not learn within the demo's steps. Objects 1.5x
  # the default size: at the default size the base stage's 8x8 tokens of a 32 px scene keep
  # too little of a shape for the SR stage to draw it. The held-out pairs stay (docs/demo.md).
  # The tokenizer trains on these scenes too (muse_jax.demo links them).
  c.data.shapes.update(dict(num_train=4096, num_heldout=256, max_count=2, two_group_prob=0.0,
                            object_scale=1.5))
  c.data.num_workers = 1
  # model / weights / resolution of both tokenizer sections are set by muse_jax.demo.
  section = lambda: ml_collections.ConfigDict(dict(  # noqa: E731
      model=common_vqgan.vqgan_model("tiny"), weights="", resolution=0, seed=0))
  c.tokenizer = section()
  c.sr_tokenizer = section()
  # A random-init tiny T5 (seeded): deterministic random features of the caption tokens.
  c.text_encoder = common_t5.text_encoder_config("tiny")
  c.text_encoder.update(dict(max_length=32, dtype="float32", param_dtype="float32",
                             output_dtype="float32", weights_format="random"))
  c.precompute = ml_collections.ConfigDict(dict(
      splits=("train", "heldout"), batch_size=128, examples_per_shard=1024, log_every=16,
      spiece_vocab_size=64, spiece_corpus_size=2000))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1,
                                          rules=common.DEFAULT_RULES))
  return c


def _token_stage(c, *, batch_size, num_steps, learning_rate, eval_every):
  c.optimizer.update(dict(name="adamw", learning_rate=learning_rate, warmup_steps=20,
                          weight_decay=0.0, end_lr_fraction=0.05))
  c.data.update(dict(source="precomputed", reader="numpy", shuffle_buffer=4096))
  c.train.update(dict(batch_size=batch_size, num_steps=num_steps, log_every=25,
                      eval_every=num_steps, eval_batches=2))
  c.checkpoint.update(dict(every_steps=100, keep=1))
  # Detector accuracy per attribute on the first 32 train-like and 32 held-out evaluation
  # captions every `eval_every` steps (TensorBoard: eval/compositional/<split>/<attribute>),
  # so a run shows when it starts to overfit; few captions and two evaluations per stage keep
  # the demo within its 15 minutes.
  # Captions, sampling settings and the stages it needs are set by muse_jax.demo.
  c.eval.samples.update(dict(every=eval_every, num=32, batch_size=32, metrics="compositional",
                             grid=16))
  return c


def base_config():
  c = common.get_config("base")
  # codebook_size, grid_size, text_dim, text_length: set by muse_jax.demo.
  # 2 heads of 64 rather than 4 of 32: faster steps on 2 CPU cores at the same width (the
  # [B, N, T, T] attention arrays halve; the base stage's time in `make demo`'s metrics.json;
  # docs/experiments.md).
  c.model.update(dict(hidden_size=128, num_layers=4, num_heads=2, head_dim=64, mlp_dim=512,
                      dtype="float32", attention="xla", scan_layers=False))
  return _token_stage(c, batch_size=32, num_steps=1300, learning_rate=2e-3, eval_every=650)


def sr_config():
  """The low-res skip (not in the paper, muse_jax/models/superres.py): with the same data
  and steps it lowers the SR eval loss and raises the detector's position and colour accuracy
  (docs/demo.md). 2 heads of 32: the [B, N, T, T] attention arrays of its 256 tokens, which
  dominate its step, halve, so steps on 2 CPU cores are faster (the SR stage's time in
  `make demo`'s metrics.json; docs/experiments.md)."""
  c = common_sr.get_config()
  c.model.update(dict(hidden_size=64, num_layers=2, lowres_num_layers=1, num_heads=2,
                      head_dim=32, mlp_dim=256, dtype="float32", attention="xla",
                      scan_layers=False, lowres_skip=True))
  return _token_stage(c, batch_size=32, num_steps=1200, learning_rate=2e-3, eval_every=600)


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.image_size = 64    # SR output side: the tokenizer trains here and the detector reads it
  c.lowres_size = 32   # base output side
  c.png_scale = 2      # PNGs are upscaled (nearest) by this factor for viewing
  c.vqgan = vqgan_config()
  c.precompute = precompute_config()
  c.base = base_config()
  c.sr = sr_config()
  c.sampling = common_sampling.get_sampling_config()
  # guidance_scale / sr_guidance_scale are the `cfg` setting of the metrics (`no_cfg`: 0)
  # unless eval.use_chosen_guidance. 1.0 as on the GPU config: there guidance 3 breaks counting
  # (stray fragments count as objects); here too guidance 3 scores the lowest count of the
  # settings in a sweep (docs/demo.md, docs/experiments.md). Those sweeps also scored the
  # evaluation captions; to choose guidance honestly, use the validation captions below.
  # Temperature 0.25 was chosen on validation captions (benchmarks/demo_diagnosis.py
  # --split=validation; docs/demo.md): at 1.0 the SR stage's samples break into more
  # fragments, which the detector counts as objects.
  c.sampling.update(dict(base_steps=12, sr_steps=12, guidance_scale=1.0, sr_guidance_scale=1.0,
                         temperature=0.25))
  c.sampling.editing.mask_free_iterations = 24
  c.eval = ml_collections.ConfigDict(dict(
      num_captions=256,       # per split: a rate's binomial standard error is at most 3.1 points
      batch_size=64,          # sampling batch
      caption_seed_offset=1,  # eval scenes: shapes seed = seed + this
      grid_images=32,         # images in samples_<split>.png
      grid_columns=8,
      rng_impl="",            # '' = JAX default PRNG
      # Choosing guidance on a validation split (the evaluation captions, held-out
      # ones above all, must not tune settings). validation_captions train-split scenes at
      # shapes seed + validation_seed_offset (neither training's scenes nor the evaluation
      # captions) score the config's guidance, none and each guidance_sweep entry, and the
      # best is chosen (metrics.json validation). 0 = off; a sweep then is a config error.
      validation_captions=0,
      validation_seed_offset=2,
      # Further guidance settings for the validation captions only (each compiles the
      # samplers once more and samples the validation captions once more): a number for
      # both stages or a (base, sr) pair. Empty here so that `make demo` keeps its time.
      guidance_sweep=(),
      # True: the evaluation splits' `cfg` rows use the guidance chosen on validation (and
      # metrics.json guidance_scale says so); False: the config's, the choice only reported.
      use_chosen_guidance=False,
      # Sampling temperatures for the validation captions only, scored after the guidance
      # sweep at the guidance the evaluation uses (sampling.temperature is scored too; each
      # entry samples the validation captions once more). `temperature_end`, if set, stays.
      temperature_sweep=(),
      # True: both evaluation rows sample at the temperature chosen on validation
      # (metrics.json temperature says so); False: sampling.temperature.
      use_chosen_temperature=False,
  ))
  c.edits = ml_collections.ConfigDict(dict(png_scale=4))
  return c
