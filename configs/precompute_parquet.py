"""Precompute from parquet files with an image column (bytes or paths) and a caption column.

COMMAND: python -m muse_jax.precompute --config=configs/precompute_parquet.py --workdir=OUT \
           --config.data.parquet.files='/data/cc/*.parquet' --config.data.parquet.image_key=jpg \
           [--config.data.parquet.caption_key=caption --config.data.parquet.id_key=key] \
           [weights below]
The image column holds encoded images, paths (relative to data.parquet.image_root, '' = the
parquet's folder) or Hugging Face datasets' {bytes, path} structs. Writes OUT/shards/train-*
(16x16 tokens at 256 px, 64x64 at 512 px, T5-XXL embeddings of 128 tokens), OUT/manifest.json
and OUT/skipped.jsonl (each skipped row as its id or '<file>:<row>' with its reason); rerunning
resumes. Train with configs/base_632m.py --config.data.source=precomputed --config.data.path=OUT.

[weights below]: the tokenizer and T5 flags listed in muse_jax/configs/common_precompute.py
(without them the tokenizers are random, with a warning, and T5 fails).
"""
from muse_jax.configs.common_precompute import precompute_config


def get_config():
  c = precompute_config("parquet")  # data.parquet.files: on the command line
  return c
