"""Precompute from TFRecord files of tf.train.Example with encoded images and captions.

COMMAND: python -m muse_jax.precompute --config=configs/precompute_tfrecord.py --workdir=OUT \
           --config.data.tfrecord.pattern='/data/train-*.tfrecord' \
           [--config.data.tfrecord.image_key=image --config.data.tfrecord.caption_key=caption] \
           [weights below]
Writes OUT/shards/train-* (16x16 tokens at 256 px, 64x64 at 512 px, T5-XXL embeddings of 128
tokens), OUT/manifest.json and OUT/skipped.jsonl (each skipped record as its id_key value or
'<file>:<index>', with its reason); rerunning resumes. Needs TensorFlow (the `tf` extra).
Train with configs/base_632m.py --config.data.source=precomputed --config.data.path=OUT.

[weights below]: the tokenizer and T5 flags listed in muse_jax/configs/common_precompute.py
(without them the tokenizers are random, with a warning, and T5 fails).
"""
from muse_jax.configs.common_precompute import precompute_config


def get_config():
  c = precompute_config("tfrecord")  # data.tfrecord.pattern: on the command line
  return c
