"""tools/pth_to_safetensors.py on tiny state dicts, run in one torch subprocess."""
import os
import subprocess
import sys

import numpy as np
import pytest

from muse_jax.weights.safetensors_io import SafetensorsReader
from tests.reference import run_reference

TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "pth_to_safetensors.py")

# Each case runs the tool as a script (runpy, __main__) in the subprocess that imported torch
# once; exit codes and stderr come back.
SCRIPT = """
import contextlib, io, os, runpy, sys, torch
d = workdir
w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
sd = {"layer.weight": w, "tied.weight": w, "layer.weight_t": w.t(),
      "half": torch.ones(2, dtype=torch.float16) / 3, "bf16": torch.tensor([1.5, -2.0]).bfloat16(),
      "bn.num_batches_tracked": torch.tensor(7)}
torch.save(sd, f"{d}/good.pth")
torch.save({"state_dict": sd, "epoch": 3}, f"{d}/ckpt.pth")
torch.save([w], f"{d}/list.pth")
class Payload:
  pass
torch.save({"x": Payload()}, f"{d}/evil.pth")
open(f"{d}/garbage.pth", "wb").write(b"not a checkpoint" * 8)
cases = {
  "good": ["good.pth", "good.safetensors"],
  "again": ["good.pth", "good.safetensors"],
  "ckpt": ["ckpt.pth", "ckpt.safetensors", "--key", "state_dict"],
  "ckpt_nokey": ["ckpt.pth", "x.safetensors"],
  "badkey": ["ckpt.pth", "x.safetensors", "--key", "model"],
  "list": ["list.pth", "x.safetensors"],
  "evil": ["evil.pth", "x.safetensors"],
  "garbage": ["garbage.pth", "x.safetensors"],
  "missing": ["nope.pth", "x.safetensors"],
}
for name, args in cases.items():
  sys.argv = ["pth_to_safetensors.py"] + [a if a.startswith("--") or a in ("state_dict", "model")
                                          else f"{d}/{a}" for a in args]
  err, out = io.StringIO(), io.StringIO()
  code = 0
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
    try:
      runpy.run_path(str(inputs["tool"]), run_name="__main__")
    except SystemExit as e:
      code = e.code
  outputs[name + "_code"] = np.array(code)
  outputs[name + "_err"] = np.array(err.getvalue())
  outputs[name + "_out"] = np.array(out.getvalue())
import shutil
from safetensors.torch import load_file
for f in ("good", "ckpt"):
  shutil.copy(f"{d}/{f}.safetensors", str(inputs["outdir"]))
  back = load_file(f"{d}/{f}.safetensors")
  outputs[f + "_same"] = np.array(back.keys() == sd.keys() and all(
      back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in sd.items()))
outputs["x_exists"] = np.array(os.path.exists(f"{d}/x.safetensors"))
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  outdir = tmp_path_factory.mktemp("pth")
  out = run_reference(SCRIPT, {"tool": np.array(os.path.abspath(TOOL)),
                               "outdir": np.array(str(outdir))})
  return outdir, out


def test_converts_a_state_dict(results):
  outdir, out = results
  assert out["good_code"] == 0 and "wrote 6 tensors" in str(out["good_out"])
  for name in ("good", "ckpt"):
    r = SafetensorsReader(str(outdir / f"{name}.safetensors"))
    assert sorted(r) == sorted(["layer.weight", "tied.weight", "layer.weight_t", "half", "bf16",
                                "bn.num_batches_tracked"])
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(r["layer.weight"], w)
    np.testing.assert_array_equal(r["tied.weight"], w)        # shared storage: copied apart
    np.testing.assert_array_equal(r["layer.weight_t"], w.T)   # non-contiguous view
    assert r["half"].dtype == np.float16 and r["bn.num_batches_tracked"].dtype == np.int64
    assert r.shape("bf16") == (2,)
    assert out[f"{name}_same"]   # every name, dtype and value, compared in torch (bf16 too)
  assert out["ckpt_code"] == 0


@pytest.mark.parametrize("case,words", [
    ("again", "exists (pass --overwrite"),
    ("ckpt_nokey", "2 entries are not named tensors, e.g. state_dict, epoch"),
    ("badkey", "no entry 'model' for --key model (found ['epoch', 'state_dict'])"),
    ("list", "expected a non-empty dict of tensors, got list"),
    ("evil", "with torch.load(weights_only=True): UnpicklingError: Unsupported global: "
             "GLOBAL __main__.Payload"),
    ("garbage", "with torch.load(weights_only=True): UnpicklingError: "),
    ("missing", "FileNotFoundError"),
])
def test_bad_input_is_one_line_and_exit_2(results, case, words):
  _, out = results
  err = str(out[f"{case}_err"])
  assert out[f"{case}_code"] == 2, err
  assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err
  assert "weights_only` set to `False" not in err     # torch's advice to load unsafely
  assert not out["x_exists"]


def test_help():
  proc = subprocess.run([sys.executable, TOOL, "--help"], capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0
  assert "weights_only=True" in proc.stdout and "--key" in proc.stdout
