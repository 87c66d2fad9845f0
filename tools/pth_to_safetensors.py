"""Convert a PyTorch state dict (.pth / .pt / .bin) into a .safetensors file.

  python tools/pth_to_safetensors.py IN.pth OUT.safetensors [--key state_dict] [--overwrite]

For weights muse_jax reads only as safetensors (e.g. pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth` or torchvision's `inception_v3_google-*.pth` for
`muse_jax.weights.inception`). Standalone: needs torch and safetensors, and is not imported by
muse_jax.

The file is read with `torch.load(path, map_location="cpu", weights_only=True)`, PyTorch's
restricted unpickler, which builds tensors, containers and primitives but runs no code from
the file. The loaded object must be a dict of name -> tensor; `--key a.b` selects a nested
dict first (checkpoints such as {"state_dict": {...}, "epoch": 3}). Tensors keep their names
and dtypes; each is copied to its own contiguous storage, since safetensors refuses tensors
that share memory (tied weights). The output is written to OUT.tmp and renamed.

Exit status: 0 on success, 2 with a one-line `error:` message on stderr when the input
cannot be read as a weights-only pickle, holds anything but a dict of tensors, or OUT exists
without --overwrite.
"""
from __future__ import annotations

import argparse
import os
import sys


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


def convert(src: str, dst: str, key: str | None = None, overwrite: bool = False) -> int:
  """Writes `dst`; returns the number of tensors written."""
  from safetensors.torch import save_file
  if os.path.exists(dst) and not overwrite:
    raise ConversionError(f"{dst} exists (pass --overwrite to replace it)")
  tensors = load_state_dict(src, key)
  tmp = dst + ".tmp"
  save_file(tensors, tmp, metadata={"format": "pt", "source": os.path.basename(src)})
  os.replace(tmp, dst)
  return len(tensors)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description="Convert a PyTorch state dict (.pth) into a .safetensors file. Loads with "
                  "torch.load(weights_only=True): no code from the file is run.")
  parser.add_argument("src", help="input .pth/.pt/.bin holding a dict of tensors")
  parser.add_argument("dst", help="output .safetensors file")
  parser.add_argument("--key", help="dotted path of the state dict inside a checkpoint dict, "
                                    "e.g. state_dict or model.ema")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
  args = parser.parse_args(argv)
  try:
    n = convert(args.src, args.dst, args.key, args.overwrite)
  except ConversionError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {n} tensors to {args.dst}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
