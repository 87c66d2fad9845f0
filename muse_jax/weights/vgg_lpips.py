"""Read the frozen VGG16 + LPIPS weights of the perceptual loss from one safetensors file.

Supported format (the only one): a `.safetensors` file holding
  features.{i}.weight  [out, in, 3, 3]  and  features.{i}.bias [out]
      for i in 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28 -- torchvision's `vgg16().features`
      state dict (ImageNet weights, `VGG16_Weights.IMAGENET1K_V1`);
  lin{k}.model.1.weight  [1, C_k, 1, 1] for k in 0..4 (C = 64, 128, 256, 512, 512) -- the LPIPS
      v0.1 linear heads (`lpips` package, `weights/v0.1/vgg.pth`).
Extra `classifier.*` keys (a full torchvision state dict) are ignored; anything else missing,
unexpected or misshapen is an error naming the keys. To build the file once, in its own process
(needs torch; it loads with `torch.load(weights_only=True)`), merge the two published files
unchanged:
  python tools/pth_to_safetensors.py vgg16-397923af.pth vgg.pth lpips_vgg16.safetensors
`vgg16-397923af.pth` is torchvision's `IMAGENET1K_V1` file
(https://download.pytorch.org/models/vgg16-397923af.pth) and `vgg.pth` the `lpips` package's
`lpips/weights/v0.1/vgg.pth` (https://github.com/richzhang/PerceptualSimilarity).
muse_jax itself never unpickles.
"""
from __future__ import annotations

import numpy as np

from muse_jax.models.lpips import LPIPS_CHANNELS, VGG16_CONVS
from muse_jax.weights.safetensors_io import SafetensorsReader, check_keys


def expected_shapes() -> dict[str, tuple[int, ...]]:
  out = {}
  for i, cin, cout in VGG16_CONVS:
    out[f"features.{i}.weight"] = (cout, cin, 3, 3)
    out[f"features.{i}.bias"] = (cout,)
  for k, c in enumerate(LPIPS_CHANNELS):
    out[f"lin{k}.model.1.weight"] = (1, c, 1, 1)
  return out


def from_torch_state(state) -> dict:
  """Torch-layout arrays (a mapping) -> the params tree used by `muse_jax.models.lpips`."""
  conv = {}
  for i, _, _ in VGG16_CONVS:
    w = np.asarray(state[f"features.{i}.weight"], np.float32)
    conv[str(i)] = {"kernel": np.transpose(w, (2, 3, 1, 0)),
                    "bias": np.asarray(state[f"features.{i}.bias"], np.float32)}
  lin = {str(k): np.asarray(state[f"lin{k}.model.1.weight"], np.float32).reshape(-1)
         for k in range(len(LPIPS_CHANNELS))}
  return {"vgg": conv, "lin": lin}


def load_lpips_params(path: str) -> dict:
  """Params tree {"vgg": {idx: {kernel HWIO, bias}}, "lin": {k: [C]}} from a safetensors file."""
  if not path.endswith(".safetensors"):
    raise ValueError(f"perceptual loss weights {path!r}: expected a .safetensors file with "
                     "torchvision vgg16 `features.*` and LPIPS `lin*` keys (see "
                     "muse_jax/weights/vgg_lpips.py)")
  reader = SafetensorsReader(path)
  check_keys(expected_shapes(), {k: reader.shape(k) for k in reader}, source=path,
             ignore_unexpected=("classifier.",))
  return from_torch_state(reader)


def random_torch_state(seed: int = 0) -> dict[str, np.ndarray]:
  """Random weights in the file format (He-initialised convs, positive LPIPS heads); for tests
  and benchmarks only: a perceptual loss with these weights is not meaningful."""
  rng = np.random.default_rng(seed)
  out = {}
  for i, cin, cout in VGG16_CONVS:
    out[f"features.{i}.weight"] = (rng.standard_normal((cout, cin, 3, 3)) *
                                   np.sqrt(2.0 / (9 * cin))).astype(np.float32)
    out[f"features.{i}.bias"] = (0.01 * rng.standard_normal(cout)).astype(np.float32)
  for k, c in enumerate(LPIPS_CHANNELS):
    out[f"lin{k}.model.1.weight"] = rng.uniform(0, 0.1, (1, c, 1, 1)).astype(np.float32)
  return out
