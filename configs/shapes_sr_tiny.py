"""Tiny super-resolution transformer trained on precomputed shapes shards with high-res tokens.

COMMAND: python -m muse_jax.precompute --config=configs/shapes_precompute.py \
           --workdir=/tmp/shapes_pre --config.sr_tokenizer.resolution=64
         python -m muse_jax.train --config=configs/shapes_sr_tiny.py --workdir=/tmp/shapes_sr \
           --config.data.path=/tmp/shapes_pre
Learns the precompute's high-res tokens (its sr_tokenizer, e.g. 16x16 at 64 px with the f4 tiny
tokenizer) from the low-res ones (8x8, what configs/shapes_base_tiny.py makes) and the text; the
model shapes are checked against the manifest before training.
"""
from configs import sr_tiny


def get_config():
  c = sr_tiny.get_config()
  c.model.update(dict(lowres_grid_size=8, grid_size=16, text_dim=32, text_length=16))
  c.data.update(dict(source="precomputed", path="/tmp/shapes_pre", eval_path="",
                     shuffle_buffer=1024))
  c.train.update(dict(num_steps=200, eval_every=100))
  return c
