"""The layering contract (pyproject.toml, checked by `make test`) holds, and it catches a new
upward import or cycle: the check is run on a copy of the package with one such import added."""
import os
import shutil
import subprocess
import sys

from tests.training.helpers import REPO

LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint(root):
  env = dict(os.environ, PYTHONPATH=root)
  return subprocess.run([LINT, "--no-cache", "--config", os.path.join(root, "pyproject.toml")],
                        cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_tree_keeps_the_contracts():
  proc = _lint(REPO)
  assert proc.returncode == 0, proc.stdout[-3000:]
  assert "2 kept, 0 broken" in proc.stdout


def test_an_upward_function_local_import_breaks_them(tmp_path):
  shutil.copytree(os.path.join(REPO, "muse_jax"), tmp_path / "muse_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(os.path.join(REPO, "pyproject.toml"), tmp_path / "pyproject.toml")
  with open(tmp_path / "muse_jax" / "data" / "batch.py", "a") as f:
    f.write("\n\ndef _upward():\n  from muse_jax.training import loop  # noqa: F401\n")
  proc = _lint(str(tmp_path))
  assert proc.returncode != 0
  assert "muse_jax.data.batch -> muse_jax.training.loop" in proc.stdout
  assert "0 kept, 2 broken" in proc.stdout
