"""Sections of a precompute config: VQ tokenizers, frozen T5, the precompute job, the mesh.

`precompute_config(source)` is Muse's precompute at the paper's sizes (configs/precompute_*.py
build on it, one per raw source): the f16 tokenizer at 256 px (16x16 tokens) for the base
stage, the f8 tokenizer at 512 px (64x64 tokens) for super-resolution, and T5-XXL embeddings of
128 tokens.

Weights, given on the command line (otherwise the tokenizers are random, with a warning, and
T5 fails for want of them):
  --config.tokenizer.weights=VQ_F16_WORKDIR --config.sr_tokenizer.weights=VQ_F8_WORKDIR
  --config.text_encoder.weights_path=T5_XXL_SAFETENSORS --config.text_encoder.spiece_model=SPM
(a vqgan workdir trained with configs/vqgan_f16_256.py / vqgan_f8_512.py, or a diffusers VQModel;
T5 v1.1 XXL encoder safetensors and its spiece.model).
"""
import ml_collections

from muse_jax.configs import common, common_data, common_t5, common_vqgan


def tokenizer_section(resolution: int, seed: int = 0, kind: str = "tiny",
                      **model) -> ml_collections.ConfigDict:
  """A VQ tokenizer for precompute: `weights` '' = random init from `seed`."""
  return ml_collections.ConfigDict(dict(
      model=common_vqgan.vqgan_model(kind, **model),
      weights="",            # vqgan workdir, diffusers VQModel dir or .safetensors
      resolution=resolution,  # images are encoded at this square side (0: none, SR only)
      seed=seed,
  ))


def precompute_section(splits=("train",), batch_size: int = 256,
                       examples_per_shard: int = 4096) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      splits=tuple(splits),  # shapes/tfds split names; each gets its own shards
      batch_size=batch_size,  # global; a multiple of processes x data-parallel size
      examples_per_shard=examples_per_shard,  # raw records per shard (per process)
      log_every=8,  # batches between progress lines
      spiece_vocab_size=0,  # > 0 and no text_encoder.spiece_model: train one here (demos)
      spiece_corpus_size=2000,  # captions it is trained on
  ))


def precompute_config(source: str) -> ml_collections.ConfigDict:
  """The paper's precompute from `data.source=source` (its data section left to fill in)."""
  c = ml_collections.ConfigDict()
  c.data = common_data.data_config()
  c.data.source = source
  c.data.num_workers = 8  # decoding threads per process; PIL releases the GIL
  c.tokenizer = tokenizer_section(256, kind="f16")
  c.sr_tokenizer = tokenizer_section(512, seed=1, kind="f8")
  c.text_encoder = common_t5.text_encoder_config("xxl")
  c.text_encoder.weights_format = "hf"  # T5 v1.1 XXL encoder safetensors (weights_path)
  c.precompute = precompute_section()
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1,
                                          rules=common.DEFAULT_RULES))
  return c
