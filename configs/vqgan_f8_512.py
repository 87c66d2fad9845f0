"""Muse's super-resolution tokenizer: VQGAN f8, 512px -> 64x64 tokens, 8192 codes (Muse Sec. 2.2).

COMMAND: python -m muse_jax.train --config=configs/vqgan_f8_512.py --workdir=/tmp/vqgan_f8 \
           --config.loss.perceptual_weights=/path/lpips_vgg16.safetensors \
           --config.data.source=folder --config.data.path=/data/images
Same recipe as vqgan_f16_256 at 512px with 3 downsamplings (channels 128,128,256,512).
"""
from muse_jax.configs import common_vqgan


def get_config():
  c = common_vqgan.get_config()
  c.model = common_vqgan.vqgan_model("f8")
  c.discriminator = common_vqgan.discriminator(512, channel_multipliers=(1, 2, 4, 4, 4, 4))
  c.data.image_size = 512
  return c
