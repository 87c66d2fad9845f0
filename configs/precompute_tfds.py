"""Precompute from a TFDS dataset, one output split per TFDS split.

COMMAND: python -m muse_jax.precompute --config=configs/precompute_tfds.py --workdir=OUT \
           --config.data.tfds.name=coco_captions --config.data.tfds.data_dir=/data/tfds \
           --config.data.tfds.caption_key=captions/text [weights below]
Each split of precompute.splits (default train, validation) gets its own shards: OUT/shards/
{split}-* (16x16 tokens at 256 px, 64x64 at 512 px, T5-XXL embeddings of 128 tokens), with
OUT/manifest.json and OUT/skipped.jsonl (each skipped record by its TFDS id, with its reason);
rerunning resumes. Needs TensorFlow and tensorflow-datasets. Train with configs/base_632m.py
--config.data.source=precomputed --config.data.path=OUT.

Weights (otherwise the tokenizers are random, with a warning, and T5 fails for want of them):
  --config.tokenizer.weights=VQ_F16_WORKDIR --config.sr_tokenizer.weights=VQ_F8_WORKDIR
  --config.text_encoder.weights_path=T5_XXL_SAFETENSORS --config.text_encoder.spiece_model=SPM
(a vqgan workdir trained with configs/vqgan_f16_256.py / vqgan_f8_512.py, or a diffusers VQModel;
T5 v1.1 XXL encoder safetensors and its spiece.model).
"""
from muse_jax.configs.common_precompute import precompute_config


def get_config():
  c = precompute_config("tfds")
  c.data.tfds.name = "coco_captions"  # set on the command line
  c.data.tfds.caption_key = "captions/text"  # the first caption of each image
  c.precompute.splits = ("train", "validation")
  return c
