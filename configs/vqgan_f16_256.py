"""Muse's base tokenizer: VQGAN f16, 256px -> 16x16 tokens, 8192 codes (Muse Sec. 2.2, Table 5).

COMMAND: python -m muse_jax.train --config=configs/vqgan_f16_256.py --workdir=/tmp/vqgan_f16 \
           --config.loss.perceptual_weights=/path/lpips_vgg16.safetensors \
           --config.data.source=folder --config.data.path=/data/images
Trains encoder, codebook and decoder (L1 + 0.05 LPIPS + 0.1 GAN from step 20k, LeCAM) for 1M
steps at batch 256; checkpoints every 1000 steps, resumable. Without perceptual_weights the run
says that the perceptual loss is off. lpips_vgg16.safetensors is torchvision's VGG16 and the LPIPS
v0.1 heads in one file, made once with
  python tools/pth_to_safetensors.py vgg16-397923af.pth vgg.pth lpips_vgg16.safetensors
from https://download.pytorch.org/models/vgg16-397923af.pth and the lpips package's
lpips/weights/v0.1/vgg.pth (https://github.com/richzhang/PerceptualSimilarity).
"""
from muse_jax.configs import common_vqgan


def get_config():
  c = common_vqgan.get_config()
  c.model = common_vqgan.vqgan_model("f16")
  c.discriminator = common_vqgan.discriminator(256)
  c.data.image_size = 256
  return c
