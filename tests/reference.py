"""Run an independent PyTorch reference in a subprocess and return its outputs.

Importing transformers/diffusers in a process that already imported TensorFlow and JAX
segfaulted on this stack, so references run in a fresh interpreter that imports only
torch and the reference library. Inputs and outputs travel as .npz files.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest


def torch_available() -> bool:
  probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True)
  return probe.returncode == 0


def run_reference(script: str, inputs: dict[str, np.ndarray] | None = None,
                  timeout: int = 600) -> dict[str, np.ndarray]:
  """`script` sees `inputs` (dict of arrays) and `workdir`; it must fill dict `outputs`."""
  with tempfile.TemporaryDirectory() as tmp:
    in_path, out_path = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
    np.savez(in_path, **(inputs or {}))
    prog = ("import numpy as np\n"
            f"inputs = dict(np.load({in_path!r}))\nworkdir = {tmp!r}\noutputs = {{}}\n"
            + textwrap.dedent(script) +
            f"\nnp.savez({out_path!r}, **outputs)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if proc.returncode != 0:
      pytest.fail(f"reference subprocess failed:\n{proc.stderr[-4000:]}")
    return dict(np.load(out_path))
