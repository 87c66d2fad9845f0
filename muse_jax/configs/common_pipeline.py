"""Shared `pipeline` config section: the stages of the cascaded text-to-image sampler.

A sampling config names each stage by the training config that made it (a module in configs/,
or a path to a .py file) and the workdir that holds its checkpoints:

  pipeline.text_encoder   T5 settings (muse_jax/configs/common_t5.py): size, weights, spiece_model.
                          Must be the encoder the training shards were precomputed with.
  pipeline.base           the base transformer (stage `base`): 256px tokens from text.
  pipeline.sr             the super-resolution transformer (stage `sr`); config '' = no SR.
  pipeline.vq_lo          the tokenizer of the base tokens (stage `vqgan`, e.g. f16 @ 256px).
  pipeline.vq_hi          the tokenizer of the SR tokens (e.g. f8 @ 512px); needed with sr.

Each stage section has:
  config    training config name ('base_632m') or path ('configs/base_632m.py'), or a
            trained workdir's config.json (what `sample --base` sets);
  workdir   its training workdir (checkpoints/ inside). Empty: WORKDIR/<stage> where WORKDIR
            is `python -m muse_jax.sample --workdir`. For vq_lo/vq_hi it may instead be a
            diffusers VQModel directory or .safetensors file (e.g. aMUSEd's vqvae). Any
            stage's workdir may also be an export (`python -m muse_jax.export`): its
            config.json gives the shapes, `model` its runtime keys;
  step      a checkpoint step; None = the newest;
  model     overrides applied on top of the training config's `model` section (runtime keys
            such as dtype and attention, or shapes for a workdir without config.json). When
            the workdir holds the trainer's config.json, its shape keys win: that is what the
            checkpoint was trained with.

Override any of them on the command line, e.g. --config.pipeline.base.workdir=/runs/base
--config.pipeline.sr.config='' (base only, 256px output).
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from muse_jax.configs import common_sampling, common_t5

STAGES = ("base", "sr", "vq_lo", "vq_hi")


def stage_section(config: str, workdir: str = "", **model) -> ml_collections.ConfigDict:
  """One stage: training config name, workdir, optional step and model overrides."""
  return ml_collections.ConfigDict(dict(
      config=config,
      workdir=workdir,
      step=config_dict.placeholder(int),
      model=ml_collections.ConfigDict(model),
  ))


def pipeline_section(text_encoder_size: str = "xxl") -> ml_collections.ConfigDict:
  """The full Muse cascade: T5-XXL -> base_632m (256px) -> sr_268m (512px) -> f8 decode."""
  p = ml_collections.ConfigDict()
  p.text_encoder = common_t5.text_encoder_config(text_encoder_size)
  p.text_encoder.weights_format = "hf"  # set weights_path and spiece_model
  # Sampling runs the transformers in bf16, with the layer loop unrolled (the training configs
  # scan it for fast compiles): each layer's weights are then sliced once per image instead of
  # inside the step loop, and the text keys and values are per-layer arrays. Attention is the
  # Pallas kernel on GPUs for sequences up to 1024 (it reads q, k, v from the fused projection),
  # cuDNN for longer ones (the SR stage's 4096 tokens), XLA elsewhere (layers.resolve_attention).
  # benchmarks/sample.py times this (its --scan and --attention: the alternatives).
  # fp8_matmuls=True (e.g. --config.pipeline.base.model.fp8_matmuls=True) runs each block's
  # post-norm projections in e4m3 on GPUs with FP8 (muse_jax/models/fp8.py says how to measure
  # its speed and effect on samples; docs/performance.md).
  # A model trained with fp8_training samples in bf16 unless a stage sets it again.
  stage = dict(dtype="bfloat16", attention="pallas", scan_layers=False, fp8_matmuls=False,
               fp8_training=False)
  p.base = stage_section("base_632m", **stage)
  p.sr = stage_section("sr_268m", **stage)
  p.vq_lo = stage_section("vqgan_f16_256")
  p.vq_hi = stage_section("vqgan_f8_512")
  return p


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.pipeline = pipeline_section()
  c.sampling = common_sampling.get_sampling_config()
  return c
