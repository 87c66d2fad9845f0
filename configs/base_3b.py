"""Muse-3B base transformer (paper App. Table 4: 48 layers, hidden 2048, MLP 8192).

COMMAND: python -m muse_jax.train --config=configs/base_3b.py --workdir=DIR \
           --config.data.source=precomputed --config.data.path=SHARDS --config.mesh.fsdp=-1 \
           --config.mesh.data=1
The head count is not published: 16 heads of 128. Parameters: 3.264B (3,264,266,240). On many
devices, shard params with FSDP (mesh.fsdp) and recompute activations (remat=dots_no_batch) as
memory needs. Layers are scanned, which compiles fastest for TPU slices (docs/scaling.md). On
GPUs with the memory for it, --config.model.scan_layers=False --config.model.remat=none makes
the step faster (docs/performance.md, "base_3b: scanned or unrolled").
"""
from muse_jax.configs import common


def get_config():
  c = common.get_config("base")
  c.model.update(dict(hidden_size=2048, num_layers=48, num_heads=16, head_dim=128,
                      mlp_dim=8192, attention="auto", remat="dots_no_batch"))
  c.train.update(dict(batch_size=512, num_steps=1_500_000))
  c.checkpoint.update(dict(every_steps=5000, keep=3))
  return c
