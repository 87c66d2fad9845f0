"""Tiny inputs for evaluation tests: random Inception-v3 and CLIP weight files in the layouts
users hold (torchvision state dict; Hugging Face CLIPModel with its tokenizer files), and
shapes captions."""
import json
import os

import numpy as np
from safetensors.numpy import save_file

from muse_jax.encoders.clip_tokenizer import BOS, EOS, byte_alphabet
from muse_jax.models import clip as C
from muse_jax.weights import clip as clip_weights
from muse_jax.weights import inception as inception_weights

# transformers' config.json of muse_jax.models.clip's "tiny" config (argmax pooling: eos 2).
TINY_CLIP_CONFIG = {
    "projection_dim": 24,
    "text_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "intermediate_size": 64, "vocab_size": 1000, "max_position_embeddings": 16,
                    "eos_token_id": 2},
    "vision_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "intermediate_size": 64, "image_size": 32, "patch_size": 8},
}
MERGES = [("t", "h"), ("th", "e</w>"), ("r", "e"), ("re", "d</w>"), ("c", "i")]


def write_inception(path: str, seed: int = 0) -> str:
  """A torchvision-layout Inception-v3 state dict with random weights (BN statistics 0 / 1)."""
  rng = np.random.default_rng(seed)
  sd = {}
  for key, (_, shape) in inception_weights.expected_keys().items():
    if key.endswith("conv.weight"):
      sd[key] = np.sqrt(2.0 / np.prod(shape[1:])) * rng.standard_normal(shape)
    elif key.endswith(("bn.weight", "running_var")):
      sd[key] = 1.0 + 0.1 * rng.uniform(size=shape)
    else:
      sd[key] = 0.1 * rng.standard_normal(shape)
  sd["fc.weight"] = np.zeros((1008, 2048))   # pytorch-fid's classifier: read and dropped
  save_file({k: v.astype(np.float32) for k, v in sd.items()}, path)
  return path


def write_tiny_clip(directory: str, seed: int = 0) -> str:
  """A Hugging Face style CLIP directory: model.safetensors, config.json, vocab.json,
  merges.txt (a byte vocabulary with a few merges)."""
  os.makedirs(directory, exist_ok=True)
  cfg = clip_weights.config_from_hf(TINY_CLIP_CONFIG)
  assert cfg == C.get_config("tiny")
  rng = np.random.default_rng(seed)
  sd = {}
  for key, (_, _, hf_shape) in clip_weights.expected_keys(cfg).items():
    if "norm" in key and key.endswith(".weight"):
      sd[key] = 1.0 + 0.1 * rng.standard_normal(hf_shape)
    elif key == "logit_scale":
      sd[key] = np.full(hf_shape, 2.6592)
    else:
      sd[key] = 0.2 * rng.standard_normal(hf_shape)
  save_file({k: np.asarray(v, np.float32) for k, v in sd.items()},
            os.path.join(directory, "model.safetensors"))
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(TINY_CLIP_CONFIG, f)
  alphabet = byte_alphabet()
  symbols = alphabet + [a + "</w>" for a in alphabet] + [a + b for a, b in MERGES]
  vocab = {s: i for i, s in enumerate(dict.fromkeys(symbols))}
  vocab[BOS], vocab[EOS] = len(vocab), len(vocab) + 1
  with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump(vocab, f)
  with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
  return directory


def shapes_captions(n: int, seed: int = 0) -> list[str]:
  from muse_jax.data.shapes import dataset as shapes
  return [ex.caption for ex in shapes.ShapesDataset("train", n, seed, 32)]


def write_sampling_chain(root: str, spiece: str) -> str:
  """What evaluation during training needs of a precompute, around configs/pipeline_tiny.py's
  random models: ROOT/vq_lo (a random f4 tokenizer checkpoint, 64 codes) and
  ROOT/precompute/manifest.json naming it and the tiny T5 (32-d) with `spiece`. Returns the
  precompute directory."""
  import shutil

  from configs import pipeline_tiny
  from muse_jax.sampling import loading
  from tests.sampling.test_pipeline import save_random_stage
  config = pipeline_tiny.get_config()
  vq = os.path.join(root, "vq_lo")
  save_random_stage(loading.stage_config(config.pipeline.vq_lo), vq, 2)
  pre = os.path.join(root, "precompute")
  os.makedirs(pre, exist_ok=True)
  shutil.copy(spiece, os.path.join(pre, "spiece.model"))
  text_encoder = config.pipeline.text_encoder.to_dict()
  text_encoder["spiece_model"] = ""   # PRE/spiece.model, as precompute leaves it
  manifest = {"format_version": 1, "config": {"text_encoder": text_encoder},
              "models": {"tokenizer": {"weights": vq}, "sr_tokenizer": {"weights": vq}}}
  with open(os.path.join(pre, "manifest.json"), "w") as f:
    json.dump(manifest, f)
  return pre
