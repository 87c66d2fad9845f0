"""Precompute from WebDataset tar shards as img2dataset writes them (LAION, COYO, DataComp, CC12M).

COMMAND: python -m muse_jax.precompute --config=configs/precompute_webdataset.py --workdir=OUT \
           --config.data.webdataset.shards='/data/laion/{00000..01023}.tar' [weights below]
Each shard holds KEY.jpg (or .png, .webp) with KEY.txt, or KEY.json whose 'caption' field is used
when there is no .txt. The shards may be a folder, a glob, a brace pattern, '::'-separated
patterns, or gs:// paths. Writes OUT/shards/train-*.tfrecord (16x16 tokens at 256 px, 64x64 at
512 px, T5-XXL embeddings of 128 tokens), OUT/manifest.json and OUT/skipped.jsonl (each skipped
sample as '<shard>/<key>' with its reason); rerunning resumes. Train with configs/base_632m.py
--config.data.source=precomputed --config.data.path=OUT.

[weights below]: the tokenizer and T5 flags listed in muse_jax/configs/common_precompute.py
(without them the tokenizers are random, with a warning, and T5 fails).
"""
from muse_jax.configs.common_precompute import precompute_config


def get_config():
  c = precompute_config("webdataset")  # data.webdataset.shards: on the command line
  return c
