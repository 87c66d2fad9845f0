"""Muse super-resolution transformer, ~268M parameters (256px tokens -> 512px tokens).

COMMAND: python -m muse_jax.train --config=configs/sr_268m.py --workdir=DIR \
           --config.data.source=precomputed --config.data.path=SHARDS
Produces the SR stage of the cascade: 64x64 high-res tokens (f8 tokenizer at 512px) predicted
from 16x16 low-res tokens (f16 at 256px) and T5-XXL text (4096-d, 128 tokens).

The paper states 268M parameters, a 16-layer low-res encoder and 32 high-res layers, and
hidden 1024 / MLP 4096 (Sec. 1, 3, Table 6); those widths with standard layers give 772.2M
(muse_jax/configs/common_sr.py), so they cannot all hold. This config keeps the published depths
(16 + 32) and picks the width for the published count: hidden 576, MLP 2816, 8192 codes, and
4 attention heads of 128 (the heads' 512 channels are projected from and back to 576), for
269,192,576 parameters (pinned in tests/models/test_superres.py). The encoder has the decoder's
width. Attention over 4096 tokens is most of the step, and cuDNN's flash kernels run fastest at
a head width of 128 (docs/performance.md; other head shapes in docs/experiments.md). Paper
recipe as for the base model: Adafactor, lr 1e-4, wd 0.045, b1 0.9, b2 0.96, 5k warmup, cosine,
batch 512, 10% text dropout.
Memory: 4096 high-res tokens per example; use attention=auto (cuDNN flash on GPUs; the cross
KV length 256 + 128 = 384 is a multiple of 64) and --config.model.remat=full if the step OOMs.
Layers are unrolled: a train step is faster and needs less memory than scanned (python
benchmarks/train_step.py --config=configs/sr_268m.py --config.train.batch_size=8
[--config.model.scan_layers=True]; docs/performance.md).
"""
from muse_jax.configs import common_sr


def get_config():
  c = common_sr.get_config()
  c.model.update(dict(hidden_size=576, num_heads=4, head_dim=128, mlp_dim=2816,
                      lowres_num_layers=16, num_layers=32, attention="auto",
                      scan_layers=False))  # unrolled: faster than scanned here (docstring)
  c.train.update(dict(batch_size=512, num_steps=1_000_000))
  c.checkpoint.update(dict(every_steps=5000, keep=3))
  return c
