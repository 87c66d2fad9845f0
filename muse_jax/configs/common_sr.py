"""Config pieces of the `sr` stage (the super-resolution transformer; muse_jax.training.sr_stage).

`get_config()` is the reference of every key an sr config may use: the base model's sections
(muse_jax/configs/common.py) with a model section extended by
  lowres_grid_size   low-res tokens per side (16x16 from the f16 tokenizer at 256px),
  lowres_num_layers  depth of the low-res self-attention encoder,
  lowres_skip        add each encoded low-res token to the high-res inputs it covers (not in
                     the paper; default False; muse_jax/models/superres.py).
`grid_size` is the high-res grid (64x64 from the f8 tokenizer at 512px) and `num_layers` the
depth of the high-res masked decoder, which cross-attends to [encoded low-res; text].
The encoder has the decoder's width, heads and MLP (outputs are concatenated, not projected).
Both token grids use `codebook_size` codes (Muse: 8192 for both tokenizers).

Defaults are the architecture Muse publishes for its SR model (Sec. 1, 3, Table 6): 16-layer
low-res encoder, 32 high-res layers, hidden 1024, MLP 4096 (head count not published: 16 of
64). Built as standard transformer layers these dimensions give 772.2M parameters, not the
268M the paper states (the paper's "multi-axis" layers are not described); configs/sr_268m.py
keeps the published depths and picks a width that matches the published count.
Optimizer and CFG dropout as for the base model (Table 4, Sec. 2.7).
"""
from muse_jax.configs import common


def get_config():
  c = common.get_config("sr")
  c.model.update(dict(grid_size=64, hidden_size=1024, num_layers=32, num_heads=16, head_dim=64,
                      mlp_dim=4096))
  c.model.lowres_grid_size = 16
  c.model.lowres_num_layers = 16
  c.model.lowres_skip = False
  return c
