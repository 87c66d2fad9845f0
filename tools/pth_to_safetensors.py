"""Convert PyTorch state dicts (.pth / .pt / .bin) into one .safetensors file.

  python tools/pth_to_safetensors.py IN.pth [IN2.pth ...] OUT.safetensors [--key state_dict]
                                     [--overwrite]

For weights muse_jax reads only as safetensors (e.g. pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth` or torchvision's `inception_v3_google-*.pth` for
`muse_jax.weights.inception`). Standalone: needs torch and safetensors, and is not imported by
muse_jax.

Several inputs are merged into one file: every tensor keeps its name, and a name found in two
inputs is an error. The VGG16 + LPIPS weights of the VQGAN's perceptual loss
(`muse_jax.weights.vgg_lpips`, `loss.perceptual_weights`) are two files merged unchanged:

  python tools/pth_to_safetensors.py vgg16-397923af.pth vgg.pth lpips_vgg16.safetensors

where `vgg16-397923af.pth` is torchvision's VGG16 `IMAGENET1K_V1` file
(https://download.pytorch.org/models/vgg16-397923af.pth; `features.*`, `classifier.*`) and
`vgg.pth` the LPIPS v0.1 linear heads `lin0.model.1.weight` .. `lin4.model.1.weight`, which the
`lpips` package ships as `lpips/weights/v0.1/vgg.pth` (from
https://github.com/richzhang/PerceptualSimilarity). muse_jax ignores the `classifier.*` tensors.

Each file is read with `torch.load(path, map_location="cpu", weights_only=True)`, PyTorch's
restricted unpickler, which builds tensors, containers and primitives but runs no code from
the file. The loaded object must be a dict of name -> tensor; `--key a.b` selects a nested
dict first (checkpoints such as {"state_dict": {...}, "epoch": 3}), the same path in every
input (inputs that need different paths cannot be merged in one run). Tensors keep their
names and dtypes; each is copied to its own contiguous storage, since safetensors refuses
tensors that share memory (tied weights). The output is written to OUT.tmp and renamed.

Exit status: 0 on success, 2 with a one-line `error:` message on stderr when an input cannot be
read as a weights-only pickle or holds anything but a dict of tensors, when two inputs hold the
same name, when OUT has an input's suffix (.pth, .pt, .bin: the last path is the output), or
when OUT exists without --overwrite.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence


class ConversionError(Exception):
  """A problem with the input or output, reported as one line."""


def _reason(e: BaseException) -> str:
  """One line for a load failure: torch's own cause when it gives one (its weights-only
  message opens with advice to load unsafely, which is not repeated here)."""
  text = str(e)
  marker = "WeightsUnpickler error:"
  if marker in text:
    text = text.split(marker, 1)[1]
  lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
  first = lines[0].split(". ")[0].rstrip(".") if lines else ""
  return f"{type(e).__name__}: {first}" if first else type(e).__name__


def load_state_dict(path: str, key: str | None):
  import torch
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # any failure to read is reported the same way
    raise ConversionError(f"cannot load {path} with torch.load(weights_only=True): "
                          f"{_reason(e)}") from None
  for part in (key.split(".") if key else ()):
    if not isinstance(obj, dict) or part not in obj:
      have = sorted(map(str, obj))[:10] if isinstance(obj, dict) else type(obj).__name__
      raise ConversionError(f"{path}: no entry {part!r} for --key {key} (found {have})")
    obj = obj[part]
  if not isinstance(obj, dict) or not obj:
    raise ConversionError(f"{path}: expected a non-empty dict of tensors, got "
                          f"{type(obj).__name__}" + ("" if key else " (select one with --key)"))
  bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and torch.is_tensor(v))]
  if bad:
    raise ConversionError(f"{path}: {len(bad)} entries are not named tensors, e.g. "
                          f"{', '.join(bad[:5])} (a checkpoint? select its state dict with --key)")
  return {k: v.detach().contiguous().clone() for k, v in obj.items()}


INPUT_SUFFIXES = (".pth", ".pt", ".bin")


def convert(srcs: str | Sequence[str], dst: str, key: str | None = None,
            overwrite: bool = False) -> int:
  """Writes the tensors of every file in `srcs` to `dst`; returns the number written."""
  from safetensors.torch import save_file
  srcs = [srcs] if isinstance(srcs, str) else list(srcs)
  # `IN.pth IN2.pth` with the output forgotten must not offer to overwrite an input.
  if dst.endswith(INPUT_SUFFIXES):
    raise ConversionError(f"the output {dst} ends in {os.path.splitext(dst)[1]}, an input's "
                          "suffix (the last path is the output .safetensors file)")
  if os.path.exists(dst) and not overwrite:
    raise ConversionError(f"{dst} exists (pass --overwrite to replace it)")
  tensors, origin = {}, {}
  for src in srcs:
    sd = load_state_dict(src, key)
    dup = sorted(k for k in sd if k in tensors)
    if dup:
      more = (f" (and {len(dup) - 1} more name{'s' if len(dup) > 2 else ''})"
              if len(dup) > 1 else "")
      raise ConversionError(f"{dup[0]!r} is in both {origin[dup[0]]} and {src}{more}: each "
                            "name must come from one input")
    tensors.update(sd)
    origin.update(dict.fromkeys(sd, src))
  tmp = dst + ".tmp"
  save_file(tensors, tmp,
            metadata={"format": "pt", "source": ", ".join(os.path.basename(s) for s in srcs)})
  os.replace(tmp, dst)
  return len(tensors)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description="Convert PyTorch state dicts (.pth) into one .safetensors file; several "
                  "inputs are merged (a name in two inputs is an error). Loads with "
                  "torch.load(weights_only=True): no code from the files is run.",
      epilog="VGG16 + LPIPS weights of the VQGAN perceptual loss: python "
             "tools/pth_to_safetensors.py vgg16-397923af.pth vgg.pth lpips_vgg16.safetensors "
             "(torchvision's https://download.pytorch.org/models/vgg16-397923af.pth and the "
             "lpips package's lpips/weights/v0.1/vgg.pth, from "
             "https://github.com/richzhang/PerceptualSimilarity).")
  parser.add_argument("src", nargs="+", help="input .pth/.pt/.bin holding a dict of tensors")
  parser.add_argument("dst", help="output .safetensors file")
  parser.add_argument("--key", help="dotted path of the state dict inside a checkpoint dict, "
                                    "e.g. state_dict or model.ema; applies to every input")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
  # Intermixed: with `src` taking several paths, plain parse_args would end the positionals
  # at the first option (`a.pth b.pth --key k out.safetensors` would fail).
  args = parser.parse_intermixed_args(argv)
  try:
    n = convert(args.src, args.dst, args.key, args.overwrite)
  except ConversionError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {n} tensors to {args.dst}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
