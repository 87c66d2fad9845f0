"""Shared config pieces. Every runnable config starts from `get_config(stage)` and overrides.

Sections: model, objective, optimizer, data, mesh, checkpoint, train, eval (common_eval.py).
Only keys defined here may appear in a config (checked by
`muse_jax.training.registry.validate`, which suggests the closest name; each stage's
`reference_config()` names the keys it accepts).
"""
import ml_collections

from muse_jax.configs import common_eval
from muse_jax.parallel import sharding

DEFAULT_RULES = sharding.DEFAULT_RULES


def transformer_model(**overrides) -> ml_collections.ConfigDict:
  """The base masked transformer (`muse_jax.models.transformer`)."""
  m = ml_collections.ConfigDict(dict(
      codebook_size=8192,    # VQ codes; the mask token id is codebook_size
      grid_size=16,          # image tokens per side (16x16 = 256 tokens at 256px, f16)
      hidden_size=1024,
      num_layers=24,
      num_heads=16,
      head_dim=64,
      mlp_dim=4096,
      text_dim=4096,         # T5-XXL width
      text_length=128,       # padded text length (cuDNN flash wants a multiple of 64)
      dropout=0.0,
      attention="xla",       # xla | cudnn | pallas | auto
      dtype="bfloat16",      # compute dtype
      param_dtype="float32",
      remat="none",          # none | full | dots | dots_no_batch
      scan_layers=True,
      fp8_matmuls=False,     # sampling only: e4m3 for the post-norm projections (models/fp8.py)
      fp8_training=False,    # the blocks' projections in FP8, e4m3 / e5m2 gradients, on GPUs
                             #   with FP8 (models/fp8_training.py): faster for the base stage,
                             #   slower for SR (its casts outweigh; docs/performance.md)
      text_pos_embed=False,  # a learned position embedding added to the projected text (not
                             #   in the paper; for text features that keep little word order)
  ))
  m.update(overrides)
  return m


def get_config(stage: str = "base") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = stage
  c.seed = 0
  c.model = transformer_model()
  c.objective = ml_collections.ConfigDict(dict(
      cfg_dropout=0.1,        # fraction of examples trained with the null text condition
      label_smoothing=0.0,
  ))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adafactor",       # adafactor (paper) | adamw
      learning_rate=1e-4,
      warmup_steps=5000,
      schedule="cosine",      # cosine | constant
      end_lr_fraction=0.0,    # final lr as a fraction of the peak (cosine)
      b1=0.9,
      b2=0.96,
      eps=1e-8,
      weight_decay=0.045,
      grad_clip=1.0,          # global-norm clip; 0 disables
  ))
  c.data = ml_collections.ConfigDict(dict(
      source="synthetic",     # synthetic (random tokens/embeddings) | precomputed
      path="",                # precomputed shards directory (source=precomputed)
      eval_path="",           # held-out shards (defaults to a slice of synthetic data)
      shuffle_buffer=10_000,  # reader=tf only
      train_split="train",    # precompute split names read for training and for eval
      eval_split="heldout",   #   (eval reads eval_path if set, else path)
      reader="auto",          # precomputed: auto = grain (global shuffle, no TF) | tf | numpy
      grain_threads=1,        # grain: reading threads per process; more for gs:// (network
                              #   waits), fewer is faster on local disk (docs/experiments.md)
      grain_prefetch=256,     # grain: records read ahead per process
  ))
  c.mesh = ml_collections.ConfigDict(dict(
      data=-1, fsdp=1, tensor=1,
      dcn_data=1,             # slices (multi-slice / multi-pod); splits the data axis
      rules=DEFAULT_RULES,
  ))
  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000,
      keep=3,
      async_save=True,
      stop_check_every=5,     # multi-process: steps between agreeing on a stop signal
  ))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=512,         # global batch
      num_steps=1_000_000,
      schedule_steps=0,       # learning-rate schedule length; 0: num_steps at the first start,
                              # then kept from config.json on resume (training/resume.py)
      grad_accum=1,           # microbatches per step
      ema_decay=0.0,          # 0 disables the EMA of params
      log_every=50,
      eval_every=5000,
      eval_batches=4,
      peak_tflops_per_device=0.0,  # 0: look up the device kind (for MFU)
      tensorboard=True,
  ))
  c.eval = common_eval.eval_config()  # sample evaluation during training; off by default
  return c

