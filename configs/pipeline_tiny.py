"""Tiny random-weight cascade (base 4x4 -> SR 8x8 tokens, 16px -> 32px): tests and CPU demos.

COMMAND: python -m muse_jax.train --config=configs/vqgan_tiny.py --workdir=/tmp/pt/vq_lo \
           --config.train.num_steps=2
         python -m muse_jax.train --config=configs/vqgan_tiny.py --workdir=/tmp/pt/vq_hi \
           --config.train.num_steps=2 --config.seed=1
         python -m muse_jax.train --config=configs/tiny.py --workdir=/tmp/pt/base \
           --config.train.num_steps=2 --config.model.text_dim=32
         python -m muse_jax.train --config=configs/sr_tiny.py --workdir=/tmp/pt/sr \
           --config.train.num_steps=2 --config.model.text_dim=32 \
           --config.model.lowres_grid_size=4 --config.model.grid_size=8
         python -m muse_jax.sample --config=configs/pipeline_tiny.py --workdir=/tmp/pt \
           --config.pipeline.text_encoder.spiece_model=SPIECE --prompt "a red cube" \
           --out /tmp/pt/cube.png
Writes a 32x32 PNG of noise-like texture (the stages are barely trained). Both tokenizers are
the f4 tiny VQGAN: 16px -> 4x4 base tokens, 32px -> 8x8 SR tokens. SPIECE is any T5-style
sentencepiece model with <= 256 pieces (e.g. WORKDIR/spiece.model of
configs/shapes_precompute.py); the text encoder is a random tiny T5 (32-d outputs, 8 tokens).
"""
from muse_jax.configs import common_pipeline


def get_config():
  c = common_pipeline.get_config()
  p = c.pipeline
  p.text_encoder = common_pipeline.common_t5.text_encoder_config("tiny")
  p.text_encoder.update(dict(max_length=8, dtype="float32", param_dtype="float32",
                             output_dtype="float32", weights_format="random"))
  # Base unrolled (as muse_jax/configs/common_pipeline.py samples), SR scanned: the tests
  # sample with both.
  p.base = common_pipeline.stage_section("tiny", text_dim=32, dtype="float32", attention="xla",
                                         scan_layers=False)
  p.sr = common_pipeline.stage_section("sr_tiny", text_dim=32, lowres_grid_size=4, grid_size=8,
                                       dtype="float32", attention="xla", scan_layers=True)
  p.vq_lo = common_pipeline.stage_section("vqgan_tiny")
  p.vq_hi = common_pipeline.stage_section("vqgan_tiny")
  s = c.sampling
  s.update(dict(base_steps=4, sr_steps=2))
  s.editing.mask_free_iterations = 3
  return c
