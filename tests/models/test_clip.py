"""CLIP: parity with transformers' CLIPModel and CLIPImageProcessor; loader errors; presets.

One PyTorch subprocess (module-scope fixture) builds two tiny random CLIPModels (LayerNorms,
biases and logit_scale perturbed away from their init), saves them with `save_pretrained`
(config.json + safetensors, one sharded) and returns their embeddings, logits and processor
outputs; the JAX side loads the saved files with the muse_jax loader.
Tolerance: 1e-4 relative to each element with a floor of 1e-4 x the largest magnitude.
"""
import dataclasses
import importlib.util
import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from muse_jax.models import clip as C
from muse_jax.models import clip_preprocess as P
from muse_jax.weights import clip as W
from muse_jax.weights.safetensors_io import WeightsError
from tests.reference import run_reference

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "torchvision", "transformers")),
    reason="needs torch, torchvision and transformers (requirements-test.txt)")

# name -> (transformers CLIPConfig kwargs, saved sharded?)
CASES = {
    # OpenAI's config style: eos_token_id 2 -> pooling at argmax(ids); quick_gelu.
    "argmax": (dict(projection_dim=48, text_config=dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
        vocab_size=1000, max_position_embeddings=16, eos_token_id=2), vision_config=dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        image_size=32, patch_size=8)), False),
    # First occurrence of eos_token_id 500 (ids above it appear too), erf gelu, 3 and 5 heads,
    # other eps, sharded safetensors with an index.
    "eos": (dict(projection_dim=32, text_config=dict(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=80,
        vocab_size=1000, max_position_embeddings=16, eos_token_id=500, hidden_act="gelu",
        layer_norm_eps=1e-6), vision_config=dict(
        hidden_size=40, num_hidden_layers=1, num_attention_heads=5, intermediate_size=72,
        image_size=24, patch_size=8, hidden_act="gelu", layer_norm_eps=1e-6)), True),
}

REFERENCE = """
import json, os, torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, CLIPImageProcessor
torch.manual_seed(0)
torch.set_num_threads(1)
cases = json.loads(str(inputs["cases"]))
out_dir = str(inputs["outdir"])
for name, (kwargs, sharded) in cases.items():
  model = CLIPModel(CLIPConfig(**kwargs)).eval()
  with torch.no_grad():
    for n, p in model.named_parameters():
      if "norm" in n and n.endswith(".weight"):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif "norm" in n or n.endswith(".bias"):
        p.copy_(0.2 * torch.randn_like(p))
    model.logit_scale.fill_(1.5)
  model.save_pretrained(os.path.join(out_dir, name),
                        **({"max_shard_size": "40KB"} if sharded else {}))
  nchw = torch.from_numpy(inputs[name + "_pixels"]).permute(0, 3, 1, 2)
  ids = torch.from_numpy(inputs[name + "_ids"]).long()
  mask = torch.from_numpy(inputs[name + "_mask"]).long()
  with torch.no_grad():
    outputs[name + "_image"] = model.get_image_features(pixel_values=nchw).pooler_output.numpy()
    text = model.get_text_features(input_ids=ids, attention_mask=mask)
    outputs[name + "_text"] = text.pooler_output.numpy()
    both = model(input_ids=ids, pixel_values=nchw, attention_mask=mask)
    outputs[name + "_logits"] = both.logits_per_image.numpy()
    s = kwargs["vision_config"]["image_size"]
    proc = CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
    pix = proc(images=list(inputs["small_uint8"]), return_tensors="pt")["pixel_values"]
    outputs[name + "_from_uint8"] = model.get_image_features(pixel_values=pix).pooler_output.numpy()

def nhwc(t):
  return t.permute(0, 2, 3, 1).numpy()

proc = CLIPImageProcessor()
for key in ("square", "wide", "tall"):
  outputs["proc_" + key] = nhwc(proc(images=list(inputs[key]), return_tensors="pt")["pixel_values"])
floats = proc(images=list(inputs["float"]), do_rescale=False, return_tensors="pt")
outputs["proc_float"] = nhwc(floats["pixel_values"])
up = torch.from_numpy(inputs["float_small"]).permute(0, 3, 1, 2)
outputs["up"] = nhwc(F.interpolate(up, size=(224, 336), mode="bicubic", antialias=True,
                                   align_corners=False))
"""


def _tokens(rng, eos, lengths, length, pad):
  """Random ids below 1000 (never `eos` except at the end of each row), padded with `pad`."""
  ids = rng.integers(1, 999, (len(lengths), length))
  ids[ids == eos] = eos + 1
  mask = (np.arange(length)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
  ids[np.arange(len(lengths)), np.asarray(lengths) - 1] = eos
  return np.where(mask == 1, ids, pad).astype(np.int32), mask


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  rng = np.random.default_rng(0)
  inputs = dict(cases=np.array(json.dumps(CASES)),
                outdir=np.array(str(tmp_path_factory.mktemp("clip"))),
                square=rng.integers(0, 256, (2, 224, 224, 3)).astype(np.uint8),
                wide=rng.integers(0, 256, (1, 250, 300, 3)).astype(np.uint8),
                tall=rng.integers(0, 256, (1, 180, 120, 3)).astype(np.uint8),
                float=rng.uniform(0, 1, (1, 240, 260, 3)).astype(np.float32),
                float_small=rng.uniform(0, 1, (1, 100, 150, 3)).astype(np.float32),
                small_uint8=rng.integers(0, 256, (2, 40, 48, 3)).astype(np.uint8))
  for name, (kw, _) in CASES.items():
    s = kw["vision_config"]["image_size"]
    inputs[name + "_pixels"] = rng.normal(size=(2, s, s, 3)).astype(np.float32)
    # EOS is the largest id (999, argmax) or 500 (first occurrence; pads repeat it).
    eos = 999 if kw["text_config"]["eos_token_id"] == 2 else 500
    ids, mask = _tokens(rng, eos, [12, 5, 1], 12, pad=eos)
    ids[1, 5:] = 0   # a second padding convention: zeros after EOS
    inputs[name + "_ids"], inputs[name + "_mask"] = ids, mask
  return inputs["outdir"].item(), inputs, run_reference(REFERENCE, inputs)


def assert_close(got, ref):
  assert got.shape == ref.shape and got.dtype == np.float32
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_preprocess_matches_processor(reference):
  _, inputs, out = reference
  for key in ("square", "wide", "tall"):   # uint8: exact up to float round-off
    np.testing.assert_allclose(np.asarray(P.preprocess(inputs[key])), out["proc_" + key],
                               atol=2e-6, rtol=0)
  np.testing.assert_allclose(np.asarray(P.preprocess(inputs["float"])), out["proc_float"],
                             atol=2e-5, rtol=0)
  x = inputs["float_small"]   # upsampling weights (support not stretched)
  up = np.einsum("ow,bhwc->bhoc", P.float_matrix(150, 336), x)
  np.testing.assert_allclose(np.einsum("oh,bhwc->bowc", P.float_matrix(100, 224), up),
                             out["up"], atol=2e-6, rtol=0)
  # Normalisation alone: a 224 x 224 image is not resampled.
  mean, std = np.float32(P.MEAN), np.float32(P.STD)
  np.testing.assert_allclose(out["proc_square"], (inputs["square"] / 255.0 - mean) / std,
                             atol=2e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_parity_with_transformers(reference, name):
  d, inputs, out = reference
  cfg, params = W.load_clip(f"{d}/{name}")
  model = W.model_def(cfg).bind(params)
  ids, mask = inputs[name + "_ids"], inputs[name + "_mask"]
  image_embeds, text_embeds = W.embed_fns(params, cfg)
  assert_close(np.asarray(jax.jit(model.encode_image)(inputs[name + "_pixels"])),
               out[name + "_image"])
  assert_close(text_embeds(ids, mask), out[name + "_text"])
  assert_close(np.asarray(jax.jit(model.__call__)(inputs[name + "_pixels"], ids, mask)),
               out[name + "_logits"])
  assert_close(image_embeds(inputs["small_uint8"]), out[name + "_from_uint8"])


def test_pooling_rule_matters(reference):
  """The eos case's rows hold ids above the EOS id: argmax pooling would pick another token."""
  d, inputs, out = reference
  cfg, params = W.load_clip(f"{d}/eos")
  assert cfg.text.eos_token_id == 500
  argmax_cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, eos_token_id=None))
  _, text_embeds = W.embed_fns(params, argmax_cfg)
  got = text_embeds(inputs["eos_ids"], inputs["eos_mask"])
  assert np.abs(got - out["eos_text"]).max() > 1e-2 * np.abs(out["eos_text"]).max()


def test_bad_keys_are_named(reference, tmp_path):
  d, *_ = reference
  cfg = W.read_config(f"{d}/argmax")
  sd = load_file(f"{d}/argmax/model.safetensors")
  del sd["visual_projection.weight"], sd["text_model.encoder.layers.1.mlp.fc2.bias"]
  sd["vision_model.embeddings.patch_embedding.weight"] = np.zeros((64, 3, 8, 7), np.float32)
  sd["text_model.encoder.layers.2.self_attn.q_proj.weight"] = np.zeros((64, 64), np.float32)
  sd["text_model.embeddings.position_ids"] = np.arange(16)[None]   # ignored, by design
  save_file(sd, str(tmp_path / "bad.safetensors"))
  with pytest.raises(WeightsError) as e:
    W.load_clip(str(tmp_path / "bad.safetensors"), cfg)
  msg = str(e.value)
  assert ("2 missing: text_model.encoder.layers.1.mlp.fc2.bias, visual_projection.weight;"
          in msg)
  assert "1 unexpected: text_model.encoder.layers.2.self_attn.q_proj.weight;" in msg
  assert ("1 misshapen: vision_model.embeddings.patch_embedding.weight: file (64, 3, 8, 7) vs "
          "model (64, 3, 8, 8)") in msg
  assert "position_ids" not in msg
  with pytest.raises(FileNotFoundError, match="config.json"):
    W.load_clip(str(tmp_path / "bad.safetensors"))


def test_configs_and_presets():
  # transformers' CLIPModel parameter counts for the OpenAI configs.
  for name, n in (("vit_b32", 151_277_313), ("vit_l14", 427_616_513)):
    p = W.model_def(C.get_config(name)).abstract_params()
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(p)) == n
  # OpenAI's L/14 config.json (abridged: absent keys take transformers' defaults).
  l14 = W.config_from_hf({"projection_dim": 768, "text_config": {
      "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
      "eos_token_id": 2}, "vision_config": {
      "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
      "num_hidden_layers": 24, "patch_size": 14}})
  assert l14 == C.get_config("vit_l14")
  assert W.config_from_hf({}).text.eos_token_id == 49407   # transformers' default id
  assert W.config_from_hf({"text_config": {"eos_token_id": 2}}) == C.get_config("vit_b32")
  with pytest.raises(WeightsError, match="activation 'relu'"):
    W.config_from_hf({"vision_config": {"hidden_act": "relu"}})
  keys = W.expected_keys(C.get_config("vit_b32"))
  assert keys["vision_model.encoder.layers.0.self_attn.q_proj.weight"][1:] == (
      (768, 12, 64), (768, 768))
  assert keys["text_model.encoder.layers.11.self_attn.out_proj.weight"][1:] == (
      (8, 64, 512), (512, 512))
  assert keys["vision_model.embeddings.patch_embedding.weight"][2] == (768, 3, 32, 32)


def test_input_checks():
  cfg = C.get_config("tiny")
  fm = W.model_def(cfg)
  p = fm.abstract_params()
  ok = jax.eval_shape(lambda p, x: fm.bind(p).encode_image(x), p,
                      jax.ShapeDtypeStruct((2, 32, 32, 3), np.float32))
  assert ok.shape == (2, 24)
  with pytest.raises(ValueError, match=r"takes \[B, 32, 32, 3\]"):
    jax.eval_shape(lambda p, x: fm.bind(p).encode_image(x), p,
                   jax.ShapeDtypeStruct((2, 32, 40, 3), np.float32))
  with pytest.raises(ValueError, match="length 17 must be in 1..16"):
    W.validate_tokens(np.zeros((1, 17), np.int32), None, cfg.text)
  with pytest.raises(ValueError, match="integer array"):
    W.validate_tokens(np.zeros((1, 4), np.float32), None, cfg.text)
  with pytest.raises(ValueError, match=r"lie in \[0, 1000\)"):
    W.validate_tokens(np.full((1, 4), 1000), None, cfg.text)
  with pytest.raises(ValueError, match="0/1 of the ids' shape"):
    W.validate_tokens(np.zeros((2, 4), np.int32), np.ones((2, 3)), cfg.text)
  with pytest.raises(ValueError, match="uint8 in"):
    P.preprocess(np.zeros((1, 8, 8, 3), np.int32))
  with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
    P.preprocess(np.full((1, 8, 8, 3), 2.0, np.float32))
