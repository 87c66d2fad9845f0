"""Config pieces of the `vqgan` stage (the image tokenizer; muse_jax.training.vqgan_stage).

`get_config()` is the reference of every key a vqgan config may use. Sections beyond the shared
ones (muse_jax/configs/common.py): model (muse_jax.models.vqgan.VQGANConfig fields), discriminator,
loss, quantizer (dead-code handling), disc_optimizer, finetune (Muse Sec. 2.5).

Values from the Muse paper (Table 5, Sec. 2.2/2.5, A.2): 8192 codes, 2 res blocks per resolution,
base width 128, no attention, Adam (0.9, 0.99) lr 1e-4 with weight decay 1e-4 for G and D,
cosine decay, 10k warmup, batch 256, 1M steps, perceptual weight 0.05, adversarial weight 0.1;
fine-tuned decoder: 4 res blocks per resolution, base width 256. Values the paper does not state
are marked "not in Muse" with the source of the default.
"""
import ml_collections

from muse_jax.configs import common, common_data


def vqgan_model(kind: str = "f16", **overrides) -> ml_collections.ConfigDict:
  """Tokenizer architecture. kind: f16 (16x16 tokens at 256px), f8 (64x64 at 512px), tiny."""
  base = dict(
      block_out_channels=(128, 128, 256, 256, 512),  # channel_mult (1,1,2,2,4) (MaskGIT f16)
      layers_per_block=2,
      decoder_block_out_channels=None,   # None: mirror the encoder
      decoder_layers_per_block=None,
      latent_channels=256,               # not in Muse; MaskGIT's embedding_dim
      codebook_size=8192,
      codebook_dim=None,                 # None: latent_channels
      codebook_norm="none",              # none | l2: l2-normalised latents and codes (ViT-VQGAN
                                         # factorized codes, with a small codebook_dim); not in Muse
      patch_size=1,                      # >1: space-to-depth stem + depth-to-space head
                                         # (factor patch_size * 2^(levels-1)); not in Muse
      norm_groups=32,
      norm_eps=1e-6,
      in_channels=3,
      out_channels=3,
      beta=0.25,                         # commitment weight
      pixel_range="-1_1",                # what the network sees; the API uses [0, 1]
      dtype="bfloat16",
      param_dtype="float32",
  )
  if kind == "f8":
    base["block_out_channels"] = (128, 128, 256, 512)  # 3 downsamplings: 512px -> 64x64
  elif kind == "tiny":
    base.update(block_out_channels=(16, 16, 32), layers_per_block=1, latent_channels=8,
                codebook_size=64, norm_groups=8, dtype="float32")
  elif kind == "amused":
    # The open aMUSEd VQModel (diffusers, amused/amused-256 subfolder vqvae).
    base.update(block_out_channels=(128, 256, 256, 512, 768), latent_channels=64,
                codebook_dim=64, pixel_range="0_1")
  elif kind != "f16":
    raise ValueError(f"unknown tokenizer kind {kind!r}; use f16, f8, tiny or amused")
  m = ml_collections.ConfigDict(base)
  m.update(overrides)
  return m


def discriminator(image_size: int = 256, **overrides) -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict(dict(
      image_size=image_size,
      base_channels=128,
      channel_multipliers=(2, 4, 4, 4, 4),  # not in Muse; StyleGAN/MaskGIT-like
      max_channels=512,
      mbstd_group=4,                        # StyleGAN minibatch stddev; 0 disables
      in_channels=3,
      dtype="bfloat16",
      param_dtype="float32",
  ))
  d.update(overrides)
  return d


def adam_optimizer(**overrides) -> ml_collections.ConfigDict:
  o = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-4, warmup_steps=10_000, schedule="cosine",
      end_lr_fraction=0.0, b1=0.9, b2=0.99, eps=1e-8, weight_decay=1e-4,
      grad_clip=0.0,  # not in Muse
  ))
  o.update(overrides)
  return o


def get_config() -> ml_collections.ConfigDict:
  c = common.get_config("vqgan")
  del c["objective"]
  c.model = vqgan_model("f16")
  c.discriminator = discriminator(256)
  c.loss = ml_collections.ConfigDict(dict(
      reconstruction="l1",           # l1 | l2 | l1+l2 (not in Muse)
      reconstruction_weight=1.0,
      perceptual_weight=0.05,        # Muse Table 5
      perceptual_weights="",         # .safetensors with VGG16 + LPIPS keys
                                     # (muse_jax/weights/vgg_lpips.py); "" = perceptual loss OFF
      perceptual_dtype="bfloat16",
      adversarial_weight=0.1,        # Muse Table 5
      adversarial_weight_mode="fixed",  # fixed | adaptive (taming's gradient-norm ratio)
      gan_loss="hinge",              # hinge | non_saturating (not in Muse)
      disc_start_step=20_000,        # delayed GAN start (not in Muse)
      lecam_weight=0.001,            # LeCAM regulariser (MAGVIT's value; not in Muse)
      lecam_ema_decay=0.999,
      codebook_weight=1.0,           # codebook + commitment (beta in model.beta)
  ))
  c.quantizer = ml_collections.ConfigDict(dict(
      usage_ema_decay=0.99,          # EMA of per-code usage frequency
      restart_every=1000,            # dead-code restart period in steps; 0 disables
      restart_threshold=0.03,        # dead: usage EMA < threshold / codebook_size
  ))
  c.optimizer = adam_optimizer()
  c.disc_optimizer = adam_optimizer()
  c.finetune = ml_collections.ConfigDict(dict(
      decoder_only=False,            # Muse Sec. 2.5: train only post_quant_conv + decoder
      init_from="",                  # finished tokenizer: a vqgan workdir (Orbax checkpoints)
                                     # or a diffusers VQModel dir/.safetensors
  ))
  c.data = ml_collections.ConfigDict(dict(
      source="shapes",               # shapes (procedural scenes) | synthetic (uniform noise) |
                                     # folder (the images under `path`, any epath filesystem)
      path="",                       # folder: the training images
      eval_path="",                  # folder: the eval images (empty: `path`'s, in file order)
      shuffle_buffer=10_000,
      image_size=256,
      num_workers=0,                 # >0: draw the next training batches on that many spawned
                                     # processes (same batches; scenes are GIL-bound Python)
      shapes=common_data.scenes_config(),  # which `shapes` scenes
  ))
  c.train.update(dict(batch_size=256, num_steps=1_000_000, eval_every=5000, eval_batches=4,
                      image_grid_every=5000, image_grid_size=8))
  return c
