"""tools/pth_to_safetensors.py on tiny state dicts and on random VGG16 + LPIPS files of the real
shapes, run in one torch subprocess."""
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open

from muse_jax.weights.safetensors_io import SafetensorsReader
from muse_jax.weights.vgg_lpips import load_lpips_params
from tests.reference import run_reference

TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "pth_to_safetensors.py")

# Each case runs the tool as a script (runpy, __main__) in the subprocess that imported torch
# once; exit codes and stderr come back.
SCRIPT = """
import contextlib, io, os, runpy, sys, torch
d = workdir
outputs["workdir"] = np.array(d)
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
torch.save({"zzz": w, "layer.weight": w, "half": w}, f"{d}/clash.pth")
# The two files of the LPIPS example, random: torchvision's vgg16 state dict (its names and
# shapes, taken from the model built on the meta device) and the LPIPS v0.1 heads. The
# classifier.* tensors, which the loader ignores, are small stand-ins under their real names:
# at full size (500 MB) writing and reading them would be most of this test's time.
import torchvision
torch.manual_seed(0)
with torch.device("meta"):
  shapes = {k: v.shape for k, v in torchvision.models.vgg16(weights=None).state_dict().items()}
vgg = {k: torch.randn(s) * 0.05 if k.startswith("features.")
       else torch.randn([min(n, 4) for n in s]) for k, s in shapes.items()}
lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1)
       for k, c in enumerate((64, 128, 256, 512, 512))}
torch.save(vgg, f"{d}/vgg16-397923af.pth")
torch.save(lin, f"{d}/vgg.pth")
torch.save({"state_dict": lin}, f"{d}/lin_ckpt.pth")
outputs["vgg_keys"] = np.array(sorted(vgg))
np.savez(f"{inputs['outdir']}/lpips_expected.npz",
         **{k: v.numpy() for k, v in {**vgg, **lin}.items() if not k.startswith("classifier.")})
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
  "lpips": ["vgg16-397923af.pth", "vgg.pth", f"{inputs['outdir']}/lpips_vgg16.safetensors"],
  "merge_key": ["ckpt.pth", "--key", "state_dict", "lin_ckpt.pth", "merged.safetensors"],
  "dup": ["good.pth", "vgg.pth", "clash.pth", "x.safetensors"],
  "dup_one": ["vgg.pth", "vgg.pth", "x.safetensors"],
  "no_output": ["vgg.pth", "good.pth"],
}
for name, args in cases.items():
  sys.argv = ["pth_to_safetensors.py"] + [
      a if a.startswith(("--", "/")) or a in ("state_dict", "model") else f"{d}/{a}"
      for a in args]
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
back = load_file(f"{d}/merged.safetensors")
outputs["merge_key_same"] = np.array(back.keys() == {**sd, **lin}.keys() and all(
    torch.equal(back[k], v) for k, v in {**sd, **lin}.items()))
outputs["x_exists"] = np.array(os.path.exists(f"{d}/x.safetensors"))
outputs["good_pth_loads"] = np.array(len(torch.load(f"{d}/good.pth", weights_only=True)) == 6)
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  outdir = tmp_path_factory.mktemp("pth")
  out = run_reference(SCRIPT, {"tool": np.array(os.path.abspath(TOOL)),
                               "outdir": np.array(str(outdir))})
  yield outdir, out
  # pytest keeps the last runs' temporary directories; these two are 60 MB each.
  for name in ("lpips_vgg16.safetensors", "lpips_expected.npz"):
    (outdir / name).unlink(missing_ok=True)


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


def test_merges_torchvision_vgg16_and_lpips_heads_into_the_perceptual_weights(results):
  """The LPIPS example of the tool's docstring: the two files merged unchanged are what
  `load_lpips_params` reads."""
  outdir, out = results
  assert out["lpips_code"] == 0, str(out["lpips_err"])
  path = str(outdir / "lpips_vgg16.safetensors")
  expected = dict(np.load(outdir / "lpips_expected.npz"))
  assert len(expected) == 26 + 5
  # Read back without muse_jax: every tensor of both inputs, classifier.* included.
  with safe_open(path, framework="np") as f:
    assert sorted(f.keys()) == sorted([*out["vgg_keys"], *(f"lin{k}.model.1.weight"
                                                           for k in range(5))])
    for k, v in expected.items():
      got = f.get_tensor(k)
      assert got.dtype == np.float32
      np.testing.assert_array_equal(got, v, err_msg=k)
  params = load_lpips_params(path)
  assert len(params["vgg"]) == 13 and len(params["lin"]) == 5
  for i, p in params["vgg"].items():
    np.testing.assert_array_equal(p["kernel"],
                                  np.transpose(expected[f"features.{i}.weight"], (2, 3, 1, 0)))
    np.testing.assert_array_equal(p["bias"], expected[f"features.{i}.bias"])
  for k, v in params["lin"].items():
    np.testing.assert_array_equal(v, expected[f"lin{k}.model.1.weight"].reshape(-1))


def test_merge_applies_key_to_every_input(results):
  _, out = results
  assert out["merge_key_code"] == 0 and "wrote 11 tensors" in str(out["merge_key_out"])
  assert out["merge_key_same"]


@pytest.mark.parametrize("case,words", [
    ("dup", "'half' is in both {d}/good.pth and {d}/clash.pth (and 1 more name): each name must "
            "come from one input"),
    ("dup_one", "'lin0.model.1.weight' is in both {d}/vgg.pth and {d}/vgg.pth (and 4 more names)"),
    ("no_output", "the output {d}/good.pth ends in .pth, an input's suffix (the last path is the "
                  "output .safetensors file)"),

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
  words = words.format(d=str(out["workdir"]))
  assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err
  assert "weights_only` set to `False" not in err     # torch's advice to load unsafely
  assert not out["x_exists"] and out["good_pth_loads"]


def test_help():
  proc = subprocess.run([sys.executable, TOOL, "--help"], capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0
  assert "weights_only=True" in proc.stdout and "--key" in proc.stdout
  assert "src [src ...] dst" in proc.stdout and "applies to every input" in proc.stdout
  assert "vgg16-397923af.pth vgg.pth lpips_vgg16.safetensors" in " ".join(proc.stdout.split())
