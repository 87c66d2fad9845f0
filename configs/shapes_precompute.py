"""Precompute the shapes dataset at 64 px with tiny random models: the CPU demo of the pipeline.

COMMAND: python -m muse_jax.precompute --config=configs/shapes_precompute.py \
           --workdir=/tmp/shapes_pre
Writes /tmp/shapes_pre/shards/{train,heldout}-*.tfrecord (8x8 tokens of a random tiny f8 VQ
tokenizer, 32-d embeddings of a random tiny T5 with a sentencepiece model trained on the
captions) and /tmp/shapes_pre/manifest.json; rerunning skips finished shards. Train the base
stage on it with configs/shapes_base_tiny.py (--config.data.path=/tmp/shapes_pre).

Real runs: set tokenizer.weights (a vqgan workdir or diffusers VQModel), text_encoder
(common_t5.text_encoder_config('xxl') with weights and spiece_model) and precompute.batch_size.
"""
import ml_collections

from muse_jax.configs import common, common_data, common_t5, common_vqgan


def tokenizer_section(resolution: int, seed: int = 0, **model) -> ml_collections.ConfigDict:
  """A VQ tokenizer for precompute: `weights` '' = random init from `seed`."""
  return ml_collections.ConfigDict(dict(
      model=common_vqgan.vqgan_model("tiny", **model),
      weights="",            # vqgan workdir, diffusers VQModel dir or .safetensors
      resolution=resolution,  # images are encoded at this square side (0: none, SR only)
      seed=seed,
  ))


def get_config():
  c = ml_collections.ConfigDict()
  c.data = common_data.data_config()
  c.data.source = "shapes"
  c.data.shapes.update(dict(num_train=2048, num_heldout=256))
  c.data.num_workers = 1
  # f8 tiny tokenizer: 64 px -> 8x8 tokens, 64 codes.
  c.tokenizer = tokenizer_section(64, block_out_channels=(16, 16, 32, 32))
  c.sr_tokenizer = tokenizer_section(0, seed=1, block_out_channels=(16, 16, 32, 32))
  c.text_encoder = common_t5.text_encoder_config("tiny")
  c.text_encoder.update(dict(max_length=16, dtype="float32", param_dtype="float32"))
  c.precompute = ml_collections.ConfigDict(dict(
      splits=("train", "heldout"),  # shapes/tfds split names; each gets its own shards
      batch_size=64,                # global; a multiple of processes x data-parallel size
      examples_per_shard=512,       # raw records per shard (per process)
      log_every=8,                  # batches between progress lines
      spiece_vocab_size=48,         # > 0 and no text_encoder.spiece_model: train one here
      spiece_corpus_size=2000,      # captions it is trained on
  ))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1,
                                          rules=common.DEFAULT_RULES))
  return c
