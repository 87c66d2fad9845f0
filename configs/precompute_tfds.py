"""Precompute from a TFDS dataset, one output split per TFDS split.

COMMAND: python -m muse_jax.precompute --config=configs/precompute_tfds.py --workdir=OUT \
           --config.data.tfds.name=coco_captions --config.data.tfds.data_dir=/data/tfds \
           --config.data.tfds.caption_key=captions/text [weights below]
Each split of precompute.splits (default train, validation) gets its own shards: OUT/shards/
{split}-* (16x16 tokens at 256 px, 64x64 at 512 px, T5-XXL embeddings of 128 tokens), with
OUT/manifest.json and OUT/skipped.jsonl (each skipped record by its TFDS id, with its reason);
rerunning resumes. Needs TensorFlow and TFDS (the `tf` extra). Train with configs/base_632m.py
--config.data.source=precomputed --config.data.path=OUT.

[weights below]: the tokenizer and T5 flags listed in muse_jax/configs/common_precompute.py
(without them the tokenizers are random, with a warning, and T5 fails).
"""
from muse_jax.configs.common_precompute import precompute_config


def get_config():
  c = precompute_config("tfds")
  c.data.tfds.name = "coco_captions"  # set on the command line
  c.data.tfds.caption_key = "captions/text"  # the first caption of each image
  c.precompute.splits = ("train", "validation")
  return c
