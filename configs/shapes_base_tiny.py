"""Tiny base transformer trained on precomputed shapes shards (configs/shapes_precompute.py).

COMMAND: python -m muse_jax.precompute --config=configs/shapes_precompute.py \
           --workdir=/tmp/shapes_pre
         python -m muse_jax.train --config=configs/shapes_base_tiny.py --workdir=/tmp/shapes_base \
           --config.data.path=/tmp/shapes_pre
Trains on the `train` shards and evaluates on the `heldout` shards (colour-shape pairs never
seen in training); the model shapes match the precompute (8x8 tokens of 64 codes, 16 T5 tokens
of 32 dims) and are checked against the manifest before training.
"""
from configs import tiny


def get_config():
  c = tiny.get_config()
  c.model.update(dict(codebook_size=64, grid_size=8, text_dim=32, text_length=16))
  c.data.update(dict(source="precomputed", path="/tmp/shapes_pre", eval_path="",
                     shuffle_buffer=1024))
  c.train.update(dict(num_steps=200, eval_every=100))
  return c
