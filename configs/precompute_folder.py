"""Precompute from a folder of images with captions in a JSONL file or in sidecar .txt files.

COMMAND: python -m muse_jax.precompute --config=configs/precompute_folder.py --workdir=OUT \
           --config.data.folder.root=/data/images [--config.data.folder.manifest=captions.jsonl] \
           [weights below]
With a manifest, each line is {"file": "relative/path.jpg", "caption": "..."}; without one, a.jpg
takes its caption from a.txt. Writes OUT/shards/train-* (16x16 tokens at 256 px, 64x64 at 512
px, T5-XXL embeddings of 128 tokens), OUT/manifest.json and OUT/skipped.jsonl (each skipped
image by its path under the root, with its reason); rerunning resumes. Train with
configs/base_632m.py --config.data.source=precomputed --config.data.path=OUT.

[weights below]: the tokenizer and T5 flags listed in muse_jax/configs/common_precompute.py
(without them the tokenizers are random, with a warning, and T5 fails).
"""
from muse_jax.configs.common_precompute import precompute_config


def get_config():
  c = precompute_config("folder")  # data.folder.root: on the command line
  return c
