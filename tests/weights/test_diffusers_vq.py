"""Parity with diffusers' VQModel (aMUSEd layout, small channels, random weights)."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from muse_jax.encoders.vq_tokenizer import VQTokenizer
from muse_jax.weights import diffusers_vq as D
from muse_jax.weights.safetensors_io import WeightsError
from tests.reference import run_reference, torch_available

pytestmark = pytest.mark.skipif(not torch_available(), reason="needs torch")

# aMUSEd's VQModel config with channels [128,256,256,512,768] / latent 64 / 8192 codes shrunk.
DIFFUSERS_CFG = dict(
    in_channels=3, out_channels=3, block_out_channels=[16, 32, 32, 48],
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    layers_per_block=2, latent_channels=8, num_vq_embeddings=64, norm_num_groups=8,
    vq_embed_dim=8, act_fn="silu", mid_block_add_attention=False, lookup_from_codebook=True,
    force_upcast=False, norm_type="group", sample_size=32)

BUILD = """
import torch, json
from diffusers import VQModel
torch.manual_seed(0)
cfg = json.loads(str(inputs["cfg"]))
vq = VQModel(**cfg).eval()
with torch.no_grad():
  for name, p in vq.named_parameters():
    if "norm" in name:   # non-trivial GroupNorm affine parameters
      p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
    elif name.endswith("bias"):
      p.copy_(0.1 * torch.randn_like(p))
x = torch.from_numpy(inputs["images"]).permute(0, 3, 1, 2)   # NHWC [0,1] -> NCHW
with torch.no_grad():
  # codes spread like the latents, so that many different codes are picked
  z = vq.encode(x).latents.permute(0, 2, 3, 1).reshape(-1, cfg["latent_channels"])
  emb = vq.quantize.embedding.weight
  emb.copy_(z.mean(0) + z.std(0) * torch.randn_like(emb))
vq.save_pretrained(str(inputs["outdir"]), safe_serialization=True)
with torch.no_grad():
  lat = vq.encode(x).latents
  b, c, h, w = lat.shape
  ids = vq.quantize(lat)[2][2].reshape(b, h, w)
  dec = vq.decode(ids, force_not_quantize=True, shape=(b, h, w, cfg["latent_channels"])).sample
  rand_ids = torch.from_numpy(inputs["rand_ids"]).long()
  dec_rand = vq.decode(rand_ids, force_not_quantize=True,
                       shape=(*rand_ids.shape, cfg["latent_channels"])).sample
outputs["ids"] = ids.numpy()
outputs["latents"] = lat.permute(0, 2, 3, 1).numpy()
outputs["decoded"] = dec.clip(0, 1).permute(0, 2, 3, 1).numpy()
outputs["decoded_rand"] = dec_rand.permute(0, 2, 3, 1).numpy()
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 1, (3, 32, 32, 3)).astype(np.float32)
  rand_ids = rng.integers(0, 64, (2, 4, 4)).astype(np.int64)
  d = tmp_path_factory.mktemp("vq")
  out = run_reference(BUILD, {"cfg": np.array(json.dumps(DIFFUSERS_CFG)), "images": images,
                              "rand_ids": rand_ids, "outdir": np.array(str(d))})
  return d, images, rand_ids, out


def test_parity_with_diffusers(reference):
  d, images, rand_ids, out = reference
  tok = VQTokenizer.from_diffusers(str(d))
  assert tok.cfg.pixel_range == "0_1" and tok.cfg.block_out_channels == (16, 32, 32, 48)
  import jax
  latents = jax.jit(lambda p, x: tok.model_def.bind(p).encode_latents(x))(tok.params, images)
  np.testing.assert_allclose(np.asarray(latents), out["latents"],
                             atol=1e-4, rtol=1e-4)
  ids = np.asarray(tok.encode(images))
  assert ids.shape == (3, 4, 4) and ids.dtype == np.int32
  np.testing.assert_array_equal(ids, out["ids"])
  assert len(np.unique(ids)) > 5  # a meaningful comparison, not one code everywhere
  np.testing.assert_allclose(np.asarray(tok.decode(ids)), out["decoded"], atol=1e-4, rtol=0)
  dec = jax.jit(lambda p, i: tok.model_def.bind(p).decode(i))(tok.params,
                                                               rand_ids.astype(np.int32))
  np.testing.assert_allclose(np.asarray(dec), out["decoded_rand"], atol=1e-4, rtol=0)
  # batch of 3 on 8 devices: padding is dropped again.
  assert tok.decode(ids[:1]).shape == (1, 32, 32, 3)


def test_round_trip_export(reference):
  d, *_ = reference
  cfg, params = D.load_diffusers_vq(str(d))
  state = D.to_diffusers_state(params)
  ref = load_file(str(d / D.WEIGHTS_NAME))
  assert set(state) == set(ref)
  for k in ref:
    np.testing.assert_array_equal(state[k], ref[k])


def test_bad_keys_are_named(reference, tmp_path):
  d, *_ = reference
  sd = load_file(str(d / D.WEIGHTS_NAME))
  sd.pop("decoder.up_blocks.1.resnets.2.conv1.weight")
  sd["encoder.mid_block.attentions.0.to_q.weight"] = np.zeros((48, 48), np.float32)
  sd["quant_conv.weight"] = np.zeros((8, 9, 1, 1), np.float32)
  bad = tmp_path / "bad.safetensors"
  save_file(sd, str(bad))
  cfg = D.vqgan_config_from_diffusers(DIFFUSERS_CFG)
  with pytest.raises(WeightsError) as e:
    D.load_diffusers_vq(str(bad), cfg)
  msg = str(e.value)
  assert "missing: decoder.up_blocks.1.resnets.2.conv1.weight" in msg
  assert "unexpected: encoder.mid_block.attentions.0.to_q.weight" in msg
  assert "misshapen: quant_conv.weight: file (8, 9, 1, 1) vs model (8, 8, 1, 1)" in msg


def test_unsupported_config_is_rejected():
  with pytest.raises(WeightsError, match="mid_block_add_attention"):
    D.vqgan_config_from_diffusers({**DIFFUSERS_CFG, "mid_block_add_attention": True})


def test_amused_architecture_size():
  """The aMUSEd config (146M parameters as diffusers counts them) maps onto our model exactly."""
  cfg = D.vqgan_config_from_diffusers(dict(
      block_out_channels=[128, 256, 256, 512, 768], layers_per_block=2, latent_channels=64,
      num_vq_embeddings=8192, vq_embed_dim=64, norm_num_groups=32,
      down_block_types=["DownEncoderBlock2D"] * 5, up_block_types=["UpDecoderBlock2D"] * 5,
      mid_block_add_attention=False))
  keys = D.expected_keys(cfg)
  n = sum(int(np.prod(s)) for _, s in keys.values())
  assert 145e6 < n < 147e6, n
  assert "encoder.down_blocks.3.downsamplers.0.conv.weight" in keys
  assert "decoder.up_blocks.0.resnets.2.conv_shortcut.weight" not in keys
  assert "decoder.up_blocks.1.resnets.0.conv_shortcut.weight" in keys
  assert "quantize.embedding.weight" in keys
