"""VQGAN loss functions on constructed inputs, and LPIPS (format, loader, torch parity)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from muse_jax.models.lpips import lpips
from muse_jax.training import vqgan_losses as VL
from muse_jax.weights import vgg_lpips
from muse_jax.weights.safetensors_io import WeightsError
from tests.reference import run_reference, torch_available


def test_reconstruction_and_psnr():
  x = jnp.zeros((2, 4, 4, 3))
  y = jnp.full((2, 4, 4, 3), 0.5)
  assert float(VL.reconstruction_loss(x, y, "l1")) == pytest.approx(0.5)
  assert float(VL.reconstruction_loss(x, y, "l2")) == pytest.approx(0.25)
  assert float(VL.reconstruction_loss(x, y, "l1+l2")) == pytest.approx(0.75)
  assert float(VL.psnr(x, y, 2.0)) == pytest.approx(10 * np.log10(4 / 0.25), rel=1e-5)
  with pytest.raises(ValueError):
    VL.reconstruction_loss(x, y, "l3")


def test_discriminator_losses_sign_and_scale():
  good_real, good_fake = jnp.full((4,), 2.0), jnp.full((4,), -2.0)
  bad_real, bad_fake = jnp.full((4,), -1.0), jnp.full((4,), 1.0)
  assert float(VL.discriminator_loss(good_real, good_fake, "hinge")) == 0.0
  assert float(VL.discriminator_loss(bad_real, bad_fake, "hinge")) == pytest.approx(4.0)
  ns = float(VL.discriminator_loss(bad_real, bad_fake, "non_saturating"))
  assert ns == pytest.approx(2 * np.log1p(np.e), rel=1e-6)
  assert float(VL.discriminator_loss(good_real, good_fake, "non_saturating")) < ns
  # Generator: loss falls as the discriminator scores fakes as more real.
  for kind in VL.GAN_KINDS:
    g = jax.grad(lambda f: VL.generator_adversarial_loss(f, kind))(jnp.zeros(4))
    assert np.all(np.asarray(g) < 0)
  assert float(VL.generator_adversarial_loss(jnp.full((2,), 3.0), "hinge")) == -3.0
  np.testing.assert_allclose(VL.generator_adversarial_loss(jnp.zeros(2), "non_saturating"),
                             np.log(2), rtol=1e-6)


def test_lecam_sign_scale_and_ema():
  ema = {"real": jnp.asarray(0.5), "fake": jnp.asarray(-0.5)}
  # real logits above the fake anchor and fake logits below the real anchor are penalised.
  real, fake = jnp.array([1.5, -1.0]), jnp.array([-0.5, 2.0])
  want = np.mean(np.maximum(np.array([1.5, -1.0]) + 0.5, 0) ** 2) + \
      np.mean(np.maximum(0.5 - np.array([-0.5, 2.0]), 0) ** 2)
  r = float(VL.lecam_regularizer(real, fake, ema))
  assert r == pytest.approx(want) and r > 0
  # quadratic scale: doubling the gaps quadruples R
  r2 = VL.lecam_regularizer(2 * real + 0.5, 2 * fake - 0.5, ema)
  assert float(r2) == pytest.approx(4 * want)
  # zero inside the anchors
  assert float(VL.lecam_regularizer(jnp.array([-1.0]), jnp.array([1.0]), ema)) == 0.0
  # gradients pull real logits down and fake logits up; anchors are constants
  gr, gf = jax.grad(lambda a, b: VL.lecam_regularizer(a, b, ema), argnums=(0, 1))(real, fake)
  assert float(gr[0]) > 0 and float(gr[1]) == 0 and float(gf[0]) < 0 and float(gf[1]) == 0
  new = VL.update_lecam_ema(ema, real, fake, decay=0.9)
  assert float(new["real"]) == pytest.approx(0.9 * 0.5 + 0.1 * 0.25)
  assert float(new["fake"]) == pytest.approx(0.9 * -0.5 + 0.1 * 0.75)


def test_discriminator_objective_delayed_start():
  ema = VL.init_lecam_ema()
  real, fake = jnp.array([0.3, -0.2]), jnp.array([0.1, 0.4])
  kw = dict(kind="hinge", start_step=10, lecam_weight=0.5, lecam_decay=0.9)
  loss, (new, m) = VL.discriminator_objective(real, fake, ema, step=5, **kw)
  assert float(loss) == 0.0 and float(new["real"]) == 0.0
  loss, (new, m) = VL.discriminator_objective(real, fake, ema, step=10, **kw)
  want = float(VL.discriminator_loss(real, fake, "hinge")) + 0.5 * float(
      VL.lecam_regularizer(real, fake, new))
  assert float(loss) == pytest.approx(want) and float(new["real"]) == pytest.approx(0.005)
  assert float(VL.gan_active(9, 10)) == 0.0 and float(VL.gan_active(10, 10)) == 1.0


def test_adaptive_weight():
  w = VL.adaptive_weight({"a": jnp.array([3.0, 4.0])}, {"a": jnp.array([0.0, 1.0])}, eps=0.0)
  assert float(w) == pytest.approx(5.0)
  assert float(VL.adaptive_weight(jnp.ones(2), jnp.zeros(2), max_weight=100.0)) == 100.0


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("lpips") / "lpips_vgg16.safetensors")
  state = vgg_lpips.random_torch_state(0)
  state["classifier.0.weight"] = np.zeros((2, 2), np.float32)  # ignored (torchvision extras)
  save_file(state, path)
  return path


LPIPS_TORCH = """
import torch, torch.nn.functional as F
from safetensors.torch import load_file
sd = load_file(str(inputs["path"]))
shift = torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1)
scale = torch.tensor([.458, .448, .450]).view(1, 3, 1, 1)
def feats(x):
  x = (x - shift) / scale
  out = []
  for i in [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]:
    x = F.relu(F.conv2d(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1))
    if i in (2, 7, 14, 21, 28):
      out.append(x)
    if i in (2, 7, 14, 21):
      x = F.max_pool2d(x, 2, 2)
  return out
x = torch.from_numpy(inputs["x"]).permute(0, 3, 1, 2)
y = torch.from_numpy(inputs["y"]).permute(0, 3, 1, 2)
tot = 0
for k, (a, b) in enumerate(zip(feats(x), feats(y))):
  a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
  b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
  tot = tot + F.conv2d((a - b) ** 2, sd[f"lin{k}.model.1.weight"]).mean((2, 3))[:, 0]
outputs["d"] = tot.numpy()
"""


def test_lpips_loader_and_properties(lpips_file):
  params = vgg_lpips.load_lpips_params(lpips_file)
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  y = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
  f = jax.jit(lambda p, a, b: lpips(p, a, b))
  d_xy, d_xx, d_yx = f(params, x, y), f(params, x, x), f(params, y, x)
  np.testing.assert_allclose(d_xx, 0.0, atol=1e-6)
  assert np.all(np.asarray(d_xy) > 0)
  np.testing.assert_allclose(d_xy, d_yx, rtol=1e-5)
  if torch_available():
    ref = run_reference(LPIPS_TORCH, {"path": np.array(lpips_file), "x": x, "y": y})
    np.testing.assert_allclose(d_xy, ref["d"], rtol=2e-4)


def test_lpips_bad_file_names_keys(lpips_file, tmp_path):
  state = vgg_lpips.random_torch_state(0)
  del state["lin3.model.1.weight"]
  state["features.2.weight"] = np.zeros((64, 64, 1, 1), np.float32)
  bad = str(tmp_path / "bad.safetensors")
  save_file(state, bad)
  with pytest.raises(WeightsError) as e:
    vgg_lpips.load_lpips_params(bad)
  assert "missing: lin3.model.1.weight" in str(e.value)
  assert "features.2.weight: file (64, 64, 1, 1)" in str(e.value)
  with pytest.raises(ValueError, match="safetensors"):
    vgg_lpips.load_lpips_params(str(tmp_path / "vgg.pth"))
