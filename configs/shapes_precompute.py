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

from muse_jax.configs import common, common_data, common_t5
from muse_jax.configs.common_precompute import precompute_section, tokenizer_section


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
  c.precompute = precompute_section(splits=("train", "heldout"), batch_size=64,
                                    examples_per_shard=512)
  c.precompute.spiece_vocab_size = 48  # no text_encoder.spiece_model: train one on captions
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1,
                                          rules=common.DEFAULT_RULES))
  return c
