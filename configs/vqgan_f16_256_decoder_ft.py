"""Muse decoder fine-tuning (Sec. 2.5): a bigger decoder (4 res blocks per resolution, base width
256) on a finished f16 tokenizer whose encoder and codebook stay frozen.

COMMAND: python -m muse_jax.train --config=configs/vqgan_f16_256_decoder_ft.py \
           --workdir=/tmp/vqgan_f16_ft --config.finetune.init_from=/tmp/vqgan_f16 \
           --config.loss.perceptual_weights=/path/lpips_vgg16.safetensors
init_from is the finished run's workdir (its newest checkpoint is used) or a diffusers VQModel.
Token ids are unchanged by fine-tuning, so precomputed shards stay valid.
"""
from muse_jax.configs import common_vqgan


def get_config():
  c = common_vqgan.get_config()
  c.model = common_vqgan.vqgan_model(
      "f16", decoder_block_out_channels=(256, 256, 512, 512, 1024), decoder_layers_per_block=4)
  c.finetune.decoder_only = True
  c.loss.disc_start_step = 0
  c.optimizer.warmup_steps = 1000
  c.train.num_steps = 200_000  # not in Muse
  return c
