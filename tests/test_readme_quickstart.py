"""README's quick start as written: every `python -m muse_jax.<tool>` command's flags and config
overrides parse (absl's --only_check_args stops before any work), and the Python block compiles.

Running the commands themselves takes minutes on CPU (five trainings, a precompute, a bundle
export), too long for `make test`: tools/readme_quickstart.py runs them all. The flag checks run
concurrently; each is mostly interpreter start-up."""
from __future__ import annotations

import importlib.util
import os
import subprocess

from tests.training.helpers import REPO, cli_env


def _tool():
  path = os.path.join(REPO, "tools", "readme_quickstart.py")
  spec = importlib.util.spec_from_file_location("readme_quickstart", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_quickstart_command_parses_as_written(tmp_path):
  tool = _tool()
  with open(os.path.join(REPO, "README.md")) as f:
    commands = tool.quickstart_commands(f.read())
  modules = [c.split()[2] for c in commands if c.startswith("python -m muse_jax.")]
  assert {"muse_jax.train", "muse_jax.precompute", "muse_jax.sample", "muse_jax.export"} <= set(
      modules), commands
  procs = {}
  for command in commands:
    argv = tool.localize(command, str(tmp_path))
    if argv[1:3] == ["-c", argv[2]]:
      compile(argv[2], "README.md python block", "exec")
    elif argv[1] == "-m" and argv[2].startswith("muse_jax.") and argv[-1] != "--help":
      procs[command] = subprocess.Popen(argv + ["--only_check_args"], cwd=REPO, env=cli_env(),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
    else:
      assert os.path.isfile(os.path.join(REPO, argv[1])) or argv[-1] == "--help", command
  for command, proc in procs.items():
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{command}\n{err[-3000:]}"
