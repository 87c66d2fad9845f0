"""Muse base transformer, ~632M parameters (the paper's smaller base model).

COMMAND: python -m muse_jax.train --config=configs/base_632m.py --workdir=DIR \
           --config.data.source=precomputed --config.data.path=SHARDS
The paper publishes only the parameter count. This config (hidden 1536, 16 layers, 12 heads of
128, MLP 6144, T5-XXL text width 4096, 256 image tokens, 8192 codes) has 636.1M parameters
(636,114,944; pinned in tests/models/test_transformer.py). Paper recipe: Adafactor, lr 1e-4,
wd 0.045, b1 0.9, b2 0.96, 5k warmup, cosine, batch 512.
Layers are unrolled: at 16 layers that drops the scan's stacked residual buffers and loop
copies, so a train step is faster and needs less memory than scanned (python
benchmarks/train_step.py --config=configs/base_632m.py --config.train.batch_size=64
[--config.model.scan_layers=True]; docs/performance.md).
Attention is the Pallas flash kernels, forward and backward, on GPUs (cuDNN or XLA elsewhere):
they read q, k and v in place from the fused projection, and the step is faster than with
cuDNN's (same command, [--config.model.attention=auto]; docs/performance.md).
"""
from muse_jax.configs import common


def get_config():
  c = common.get_config("base")
  c.model.update(dict(hidden_size=1536, num_layers=16, num_heads=12, head_dim=128,
                      mlp_dim=6144, attention="pallas",
                      scan_layers=False))  # unrolled: faster than scanned here (docstring)
  c.train.update(dict(batch_size=512, num_steps=1_000_000))
  c.checkpoint.update(dict(every_steps=5000, keep=3))
  return c
