"""Inception-v3 pool features: parity with torchvision's Inception3 and with pytorch-fid.

One PyTorch subprocess (module-scope fixture) builds both references with random weights (BN
statistics from one train-mode pass, then perturbed), writes their state dicts as
safetensors, and returns features; the JAX side loads those files with the muse_jax loader.
Tolerance: 1e-4 relative to each element, with an absolute floor of 1e-4 x the largest feature
(post-ReLU means may be ~0, where a pure relative bound says nothing).
"""
import importlib.util

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from muse_jax.models import inception_preprocess as P
from muse_jax.weights import inception as W
from muse_jax.weights.safetensors_io import WeightsError
from tests.reference import run_reference

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "torchvision", "pytorch_fid")),
    reason="needs torch, torchvision and pytorch-fid (requirements-test.txt)")

REFERENCE = """
import torch, torch.nn.functional as F, torchvision
import pytorch_fid.inception as PI
from safetensors.torch import save_file
torch.manual_seed(0)
torch.set_num_threads(1)   # two OpenMP threads on two shared, busy cores wait on each other
nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()
x_raw = nchw(inputs["x_raw"])
img = nchw(inputs["images"]).float() / 255.0

def resize01(x):   # pytorch-fid's resize and normalisation
  return 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1

calib = torch.cat([nchw(inputs["noise"]), resize01(nchw(inputs["smooth"]))])

def randomise(model):
  # BN statistics of one train-mode pass (momentum 1) over a noise and a smooth 299 px image,
  # then perturbed, and random affine terms: features stay within ~1e2 at 75 and 299 px.
  # (Statistics from 75 px inputs, where the 7x1 convs see mostly padding, let 299 px
  # activations grow by orders of magnitude.)
  bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  for m in bns:
    m.momentum = 1.0
  model.train()
  with torch.no_grad():
    model(calib)
    for m in bns:
      m.running_mean += 0.1 * m.running_var.sqrt() * torch.randn_like(m.running_mean)
      m.running_var *= torch.exp(0.1 * torch.randn_like(m.running_var))
      m.weight.copy_(1.0 + 0.1 * torch.randn_like(m.weight))
      m.bias.copy_(0.1 * torch.randn_like(m.bias))
  return model.eval()


tv = randomise(torchvision.models.Inception3(aux_logits=False, init_weights=True,
                                             transform_input=False))
pooled = {}
tv.avgpool.register_forward_hook(lambda m, i, o: pooled.__setitem__("f", o.flatten(1)))
save_file(tv.state_dict(), str(inputs["outdir"]) + "/torchvision.safetensors")
with torch.no_grad():
  tv(x_raw); outputs["tv_raw"] = pooled["f"].numpy()
  pre = resize01(img)
  tv(pre); outputs["tv_pre"] = pooled["f"].numpy()
  outputs["pre"] = pre.permute(0, 2, 3, 1).numpy()
  big = nchw(inputs["big"])
  outputs["pre_big"] = resize01(big).permute(0, 2, 3, 1).numpy()

# pytorch-fid's FID network: its own construction (torchvision Inception3 without its init, as
# pytorch-fid builds it, Mixed blocks swapped for FIDInception*), with the download replaced by
# our random state dict.
fid = torchvision.models.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
for name, block in (("Mixed_5b", PI.FIDInceptionA(192, 32)),
                    ("Mixed_5c", PI.FIDInceptionA(256, 64)),
                    ("Mixed_5d", PI.FIDInceptionA(288, 64)),
                    ("Mixed_6b", PI.FIDInceptionC(768, 128)),
                    ("Mixed_6c", PI.FIDInceptionC(768, 160)),
                    ("Mixed_6d", PI.FIDInceptionC(768, 160)),
                    ("Mixed_6e", PI.FIDInceptionC(768, 192)),
                    ("Mixed_7b", PI.FIDInceptionE_1(1280)),
                    ("Mixed_7c", PI.FIDInceptionE_2(2048))):
  setattr(fid, name, block)
state = randomise(fid).state_dict()
save_file(state, str(inputs["outdir"]) + "/fid.safetensors")
PI.load_state_dict_from_url = lambda *a, **k: state
net = PI.InceptionV3([3]).eval()        # resize_input and normalize_input: True
with torch.no_grad():
  outputs["fid_pre"] = net(img)[0].flatten(1).numpy()
  net.resize_input = net.normalize_input = False
  outputs["fid_raw"] = net(x_raw)[0].flatten(1).numpy()
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  rng = np.random.default_rng(0)
  inputs = dict(
      x_raw=rng.uniform(-1, 1, (2, 75, 75, 3)).astype(np.float32),    # network input, no resize
      noise=rng.uniform(-1, 1, (1, 299, 299, 3)).astype(np.float32),   # BN statistics of these
      smooth=rng.uniform(0, 1, (1, 40, 56, 3)).astype(np.float32),
      images=rng.integers(0, 256, (2, 40, 56, 3)).astype(np.uint8),    # upsampled, non-square
      big=rng.uniform(0, 1, (1, 320, 352, 3)).astype(np.float32),      # downsampled
      outdir=np.array(str(tmp_path_factory.mktemp("inception"))))
  out = run_reference(REFERENCE, inputs)
  return str(inputs["outdir"]), inputs, out


def assert_features_close(got, ref):
  assert got.shape == ref.shape and got.dtype == np.float32
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def run_network(params, variant, x):
  import jax
  fm = W.model_def(variant)
  return np.asarray(jax.jit(lambda p, v: fm.bind(p)(v))(params, x))


def test_preprocess_matches_torch_interpolate(reference):
  _, inputs, out = reference
  got = np.asarray(P.preprocess(inputs["images"]))
  np.testing.assert_allclose(got, out["pre"], atol=2e-6, rtol=0)
  np.testing.assert_allclose(np.asarray(P.preprocess(inputs["big"])), out["pre_big"],
                             atol=2e-6, rtol=0)
  # uint8 and the same pixels as floats in [0, 1] give one result; 299 is left as it is.
  np.testing.assert_allclose(np.asarray(P.preprocess(inputs["images"] / np.float32(255))), got,
                             atol=1e-6)
  same = np.random.default_rng(1).uniform(0, 1, (1, 299, 299, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(P.preprocess(same)), 2 * same - 1, atol=1e-6)


def test_torchvision_parity(reference):
  d, inputs, out = reference
  params = W.load_inception(f"{d}/torchvision.safetensors")
  assert_features_close(run_network(params, "torchvision", inputs["x_raw"]), out["tv_raw"])


def test_fid_variant_parity_with_pytorch_fid(reference):
  d, inputs, out = reference
  params = W.load_inception(f"{d}/fid.safetensors")
  assert_features_close(run_network(params, "fid", inputs["x_raw"]), out["fid_raw"])
  # The pooling differences matter: torchvision's pools on the same weights are far off.
  other = run_network(params, "torchvision", inputs["x_raw"])
  assert np.abs(other - out["fid_raw"]).max() > 1e-2 * np.abs(out["fid_raw"]).max()


@pytest.mark.parametrize("variant,file,key", [("torchvision", "torchvision", "tv_pre"),
                                              ("fid", "fid", "fid_pre")])
def test_feature_fn_with_preprocessing(reference, variant, file, key):
  d, inputs, out = reference
  features = W.feature_fn(W.load_inception(f"{d}/{file}.safetensors"), variant)
  assert_features_close(features(inputs["images"]), out[key])


def test_bad_keys_are_named(reference, tmp_path):
  d, *_ = reference
  sd = load_file(f"{d}/torchvision.safetensors")
  assert "fc.weight" in sd and "Mixed_7c.branch_pool.bn.num_batches_tracked" in sd
  del sd["Mixed_5b.branch1x1.conv.weight"], sd["Conv2d_4a_3x3.bn.running_var"]
  sd["Mixed_6a.branch3x3.conv.weight"] = np.zeros((384, 288, 3, 2), np.float32)
  sd["Mixed_8a.conv.weight"] = np.zeros((1,), np.float32)
  sd["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)    # ignored, by design
  bad = tmp_path / "bad.safetensors"
  save_file(sd, str(bad))
  with pytest.raises(WeightsError) as e:
    W.load_inception(str(bad))
  msg = str(e.value)
  assert ("2 missing: Conv2d_4a_3x3.bn.running_var, Mixed_5b.branch1x1.conv.weight" in msg)
  assert "1 unexpected: Mixed_8a.conv.weight;" in msg
  assert ("1 misshapen: Mixed_6a.branch3x3.conv.weight: file (384, 288, 3, 2) vs model "
          "(384, 288, 3, 3)") in msg
  assert "AuxLogits" not in msg and "fc." not in msg


def test_layout_and_input_checks():
  keys = W.expected_keys()
  assert len(keys) == 94 * 5   # 94 BasicConv2d layers: conv weight + 4 BatchNorm tensors
  assert keys["Conv2d_1a_3x3.conv.weight"][1] == (32, 3, 3, 3)
  assert keys["Mixed_7c.branch_pool.bn.running_mean"][1] == (192,)
  # torchvision's 27,161,264 parameters less AuxLogits (3,326,696) and fc (2,049,000).
  n = sum(int(np.prod(s)) for k, (_, s) in keys.items() if "running" not in k)
  assert n == 27_161_264 - 3_326_696 - 2_049_000
  with pytest.raises(ValueError, match="variant"):
    W.model_def("tf")
  import jax
  fm = W.model_def("fid")
  shape = jax.eval_shape(lambda p, x: fm.bind(p)(x), fm.abstract_params(),
                         jax.ShapeDtypeStruct((3, 75, 80, 3), np.float32))
  assert shape.shape == (3, 2048) and shape.dtype == np.float32
  with pytest.raises(ValueError, match=r"H, W >= 75, got \(1, 74, 80, 3\)"):
    jax.eval_shape(lambda p, x: fm.bind(p)(x), fm.abstract_params(),
                   jax.ShapeDtypeStruct((1, 74, 80, 3), np.float32))
