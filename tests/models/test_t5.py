"""T5 v1.1 encoder: parity with transformers' T5EncoderModel, padding, sharding, encode API.

The reference runs once per module in a subprocess (torch + transformers only): it builds
random T5 encoders, perturbs every RMSNorm scale away from 1, saves them as safetensors (one
sharded with an index, one as a full encoder-decoder T5) and returns their hidden states.
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from muse_jax.configs.common_t5 import text_encoder_config
from muse_jax.encoders.text_encoder import DEFAULT_RULES, TextEncoder
from muse_jax.encoders.text_tokenizer import T5Tokenizer
from muse_jax.models import t5
from muse_jax.models.functional import functionalize
from muse_jax.parallel.mesh import make_mesh
from muse_jax.parallel.sharding import tree_shardings
from muse_jax.weights.t5_hf import iter_hf_params, load_hf_params
from tests.encoders.test_text_tokenizer import train_spiece
from tests.reference import run_reference, torch_available

# name -> (T5Config, sequence length, valid lengths per row, how the reference saves it)
CASES = {
    # The registered tiny size: 3 heads (odd), 160 tokens (> max_distance 128: log buckets
    # and the clamp), loaded through TextEncoder.from_config.
    "tiny": (t5.CONFIGS["tiny"], 160, [160, 131, 7], "single"),
    # heads * d_kv (64) != d_model (40); sharded safetensors with an index json.
    "wide": (t5.T5Config(d_model=40, d_ff=56, num_heads=4, num_layers=3, d_kv=16,
                         vocab_size=96), 24, [24, 5], "sharded"),
    # Non-default buckets / distance, 5 heads; saved as a full T5ForConditionalGeneration.
    "buckets": (t5.T5Config(d_model=20, d_ff=24, num_heads=5, num_layers=1, d_kv=4,
                            vocab_size=64, num_buckets=16, max_distance=20), 48, [48, 30, 1],
                "full"),
}

_REFERENCE = """
import json, os, torch
from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5Attention
cases = json.loads(CASES_JSON)
torch.manual_seed(0)
for name, c in cases.items():
  cfg = T5Config(vocab_size=c["vocab_size"], d_model=c["d_model"], d_kv=c["d_kv"],
                 d_ff=c["d_ff"], num_layers=c["num_layers"], num_decoder_layers=1,
                 num_heads=c["num_heads"], relative_attention_num_buckets=c["num_buckets"],
                 relative_attention_max_distance=c["max_distance"], dropout_rate=0.0,
                 layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu",
                 tie_word_embeddings=False)
  full = c["save"] == "full"
  model = (T5ForConditionalGeneration if full else T5EncoderModel)(cfg).eval()
  with torch.no_grad():
    for n, p in model.named_parameters():
      if "layer_norm" in n:
        p.copy_(1.0 + 0.5 * torch.randn_like(p))
  kw = {"max_shard_size": "20KB"} if c["save"] == "sharded" else {}
  model.save_pretrained(os.path.join(ROOT, name), safe_serialization=True, **kw)
  enc = model.get_encoder() if full else model
  ids = torch.from_numpy(inputs[name + "_ids"]).long()
  mask = torch.from_numpy(inputs[name + "_mask"]).long()
  with torch.no_grad():
    outputs[name] = enc(input_ids=ids, attention_mask=mask).last_hidden_state.float().numpy()
  rel = torch.arange(-300, 301)
  outputs[name + "_buckets"] = T5Attention._relative_position_bucket(
      rel, bidirectional=True, num_buckets=c["num_buckets"],
      max_distance=c["max_distance"]).numpy()
"""


def _inputs(cfg, length, lengths, seed):
  rng = np.random.default_rng(seed)
  ids = rng.integers(2, cfg.vocab_size, (len(lengths), length)).astype(np.int32)
  mask = (np.arange(length)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
  ids[np.arange(len(lengths)), np.asarray(lengths) - 1] = 1  # EOS
  return ids * mask, mask


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  if not torch_available():
    pytest.skip("needs torch/transformers")
  root = tmp_path_factory.mktemp("hf_t5")
  inputs, cases = {}, {}
  for i, (name, (cfg, length, lengths, save)) in enumerate(CASES.items()):
    inputs[name + "_ids"], inputs[name + "_mask"] = _inputs(cfg, length, lengths, i)
    cases[name] = dict(dataclasses.asdict(cfg), save=save)
  script = f"CASES_JSON = {json.dumps(json.dumps(cases))}\nROOT = {str(root)!r}\n" + _REFERENCE
  return root, inputs, run_reference(script, inputs)


def _rel_err(ours, ref, mask):
  valid = mask.astype(bool)
  return np.abs(ours[valid] - ref[valid]).max() / np.abs(ref[valid]).max()


def random_params(cfg, seed=0):
  """Random numpy params in the muse_jax layout (fast: no XLA random-number compile)."""
  model_def, _ = functionalize(lambda r: t5.T5Encoder(cfg, rngs=r))
  rng = np.random.default_rng(seed)

  def one(path, x):
    name = path[-1].key
    if name == "scale":
      return (1.0 + 0.3 * rng.standard_normal(x.shape)).astype(np.float32)
    if name == "kernel":
      fan_in = x.shape[0] * (x.shape[1] if path[-2].key == "out" else 1)
      return (rng.standard_normal(x.shape) / np.sqrt(fan_in)).astype(np.float32)
    return rng.standard_normal(x.shape).astype(np.float32)  # embedding, rel_embedding
  return jax.tree_util.tree_map_with_path(one, model_def.abstract_params())


def _single_device_mesh():
  return make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])


def test_relative_position_bucket_matches_transformers(reference):
  _, _, ref = reference
  rel = np.arange(-300, 301)
  for name, (cfg, *_rest) in CASES.items():
    ours = t5.relative_position_bucket(rel, num_buckets=cfg.num_buckets,
                                       max_distance=cfg.max_distance)
    np.testing.assert_array_equal(ours, ref[name + "_buckets"], err_msg=name)
  # Sanity of the default table itself: exact below 8, clamped at and beyond 128.
  b = t5.relative_position_bucket(rel)
  assert b[300] == 0 and b[301] == 17 and b[299] == 1 and b[300 + 128] == 31
  assert b[300 - 128] == 15 and b[300 - 300] == 15


@pytest.mark.parametrize("name", list(CASES))
def test_hf_parity_fp32(reference, name):
  root, inputs, ref = reference
  cfg, length, lengths, _ = CASES[name]
  ids, mask = inputs[name + "_ids"], inputs[name + "_mask"]
  if name == "tiny":  # through the config path users take
    c = text_encoder_config("tiny")
    c.update(weights_format="hf", weights_path=str(root / name), max_length=length,
             dtype="float32", param_dtype="float32", output_dtype="float32")
    encoder = TextEncoder.from_config(c, mesh=_single_device_mesh())
  else:
    encoder = TextEncoder(cfg, iter_hf_params(str(root / name), cfg), mesh=_single_device_mesh(),
                          dtype=jnp.float32, param_dtype=jnp.float32,
                          output_dtype=jnp.float32, max_length=length)
  emb, out_mask = encoder.encode_tokens(ids, mask)
  emb = np.asarray(emb)
  assert emb.dtype == np.float32 and emb.shape == (len(lengths), length, cfg.d_model)
  assert _rel_err(emb, ref[name], mask) < 1e-4
  np.testing.assert_array_equal(np.asarray(out_mask), mask)
  assert not np.any(emb[mask == 0]), "padded positions must be exactly zero"
  if encoder.tokenizer is None:
    with pytest.raises(ValueError, match="spiece_model"):
      encoder.encode(["no tokenizer configured"])


def test_hf_parity_bf16(reference):
  root, inputs, ref = reference
  cfg = CASES["tiny"][0]
  params = load_hf_params(str(root / "tiny"), cfg)
  encoder = TextEncoder(cfg, params, mesh=_single_device_mesh(), dtype=jnp.bfloat16,
                        param_dtype=jnp.bfloat16, output_dtype=jnp.bfloat16, max_length=160)
  emb, _ = encoder.encode_tokens(inputs["tiny_ids"], inputs["tiny_mask"])
  assert emb.dtype == jnp.bfloat16
  assert _rel_err(np.asarray(emb, np.float32), ref["tiny"], inputs["tiny_mask"]) < 3e-2


def test_padding_does_not_change_valid_positions():
  cfg = t5.CONFIGS["tiny"]
  model_def, _ = functionalize(lambda r: t5.T5Encoder(cfg, rngs=r))
  params = random_params(cfg, seed=1)
  fwd = jax.jit(lambda p, i, m: model_def.bind(p)(i, m))
  ids, mask = _inputs(cfg, 12, [12, 6, 1], seed=3)
  short = np.asarray(fwd(params, ids, mask))
  # Longer padding, and garbage (not PAD) ids at padded positions: same valid outputs.
  ids_long = np.concatenate([ids, np.full((3, 20), 77, np.int32)], axis=1)
  ids_long[1, 6:] = 99
  mask_long = np.concatenate([mask, np.zeros((3, 20), np.int32)], axis=1)
  long = np.asarray(fwd(params, ids_long, mask_long))
  np.testing.assert_allclose(long[:, :12], short, rtol=1e-5, atol=1e-5)
  assert not np.any(long[mask_long == 0])
  # Sanity: the bias and the mask matter (outputs differ if a padded key is unmasked).
  unmasked = np.asarray(fwd(params, ids_long, np.ones_like(mask_long)))
  assert np.abs(unmasked[1, :6] - short[1, :6]).max() > 1e-3


def test_sharded_equals_unsharded(tmp_path):
  cfg = t5.CONFIGS["tiny_even"]
  mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  kw = dict(dtype=jnp.float32, param_dtype=jnp.float32, output_dtype=jnp.float32)
  sharded = TextEncoder(cfg, random_params(cfg, seed=4), mesh=mesh,
                        tokenizer=T5Tokenizer(train_spiece(str(tmp_path)), max_length=16), **kw)
  specs = jax.tree.map(lambda x: x.sharding.spec, sharded.params)
  assert specs["layers"][0]["mlp"]["wi_0"]["kernel"] == P("fsdp", "tensor")
  assert specs["layers"][1]["attention"]["query"]["kernel"] == P("fsdp", "tensor", None)
  assert specs["token_embedder"]["embedding"] == P("tensor", "fsdp")
  assert sharded.batch_multiple == 4
  single = TextEncoder(cfg, jax.device_get(sharded.params), mesh=_single_device_mesh(),
                       max_length=16, **kw)
  texts = ["a red cube on a blue sphere", "", "two shiny cones left of the dog",
           "the " * 30, "small"]
  batch = sharded.tokenize(texts)
  ids, mask = _inputs(cfg, 16, [16, 9, 3], seed=5)
  ids, mask = np.concatenate([batch.ids, ids]), np.concatenate([batch.mask, mask])
  a, _ = sharded.encode_tokens(ids, mask)
  assert a.sharding.spec[0] == ("data", "fsdp")
  b, _ = single.encode_tokens(ids, mask)
  b = np.asarray(b)
  np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-5)
  # Strings: 5 rows do not divide the batch sharding (4); padded internally and cut back.
  emb, out_mask = sharded.encode(texts)
  assert emb.shape == (5, 16, cfg.d_model) and out_mask.shape == (5, 16)
  np.testing.assert_array_equal(np.asarray(out_mask), batch.mask)
  assert np.asarray(out_mask)[1].sum() == 1  # empty caption: EOS only
  np.testing.assert_allclose(np.asarray(emb), b[:5], rtol=1e-5, atol=1e-5)
  emb = np.asarray(emb)
  assert not np.any(emb[batch.mask == 0]) and np.all(np.abs(emb[batch.mask == 1]).sum(-1) > 0)


def test_config_validation():
  c = text_encoder_config("tiny")
  c.weights_format = "pt"
  with pytest.raises(ValueError, match="weights_format"):
    TextEncoder.from_config(c)
  c = text_encoder_config("tiny")
  c.weights_format = "hf"
  with pytest.raises(ValueError, match="weights_path"):
    TextEncoder.from_config(c)
  c = text_encoder_config("tiny")
  c.dtype = "float16"
  with pytest.raises(ValueError, match="overflows"):
    TextEncoder.from_config(c)
  with pytest.raises(ValueError, match="size"):
    text_encoder_config("huge")
  assert isinstance(text_encoder_config(), ml_collections.ConfigDict)
  assert text_encoder_config().size == "xxl" and text_encoder_config().max_length == 128


def test_published_sizes():
  for size, (d, f, h, n) in {"small": (512, 1024, 6, 8), "base": (768, 2048, 12, 12),
                             "large": (1024, 2816, 16, 24), "xl": (2048, 5120, 32, 24),
                             "xxl": (4096, 10240, 64, 24)}.items():
    cfg = t5.get_config(size)
    assert (cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.num_layers, cfg.d_kv) == (d, f, h, n, 64)
    assert (cfg.vocab_size, cfg.num_buckets, cfg.max_distance) == (32128, 32, 128)
  assert 4.7e9 < t5.get_config("xxl").num_params() < 4.8e9
  # num_params agrees with the module's actual parameter tree.
  model_def, _ = functionalize(lambda r: t5.T5Encoder(t5.CONFIGS["tiny"], rngs=r))
  n = sum(np.prod(x.shape) for x in jax.tree.leaves(model_def.abstract_params()))
  assert n == t5.CONFIGS["tiny"].num_params()


def test_xxl_params_shard_to_fit_16gb_chips():
  """Abstract only: on 8 devices (fsdp 4 x tensor 2) every XXL weight matrix is split."""
  cfg = t5.get_config("xxl")
  model_def, _ = functionalize(lambda r: t5.T5Encoder(cfg, rngs=r))
  abstract = model_def.abstract_params()
  mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  shardings = tree_shardings(abstract, model_def.logical_axes(), mesh, DEFAULT_RULES)
  per_device = 0
  for x, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
    shard = s.shard_shape(x.shape)
    if np.prod(x.shape) > 2**20:  # every weight matrix; not the tiny norms / relpos table
      assert np.prod(shard) * 8 == np.prod(x.shape), (x.shape, s.spec)
    per_device += np.prod(shard) * 2  # bf16
  assert per_device < 1.25 * 2**30  # 4.76B params * 2 bytes / 8 devices ~= 1.1 GiB
