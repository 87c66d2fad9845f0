import os
import subprocess
import sys

import pytest

from tests.training.helpers import REPO

sys.path.insert(0, os.path.join(REPO, "launch"))
import sweep  # noqa: E402


def test_sweep_expands_one_command_per_point_with_its_own_workdir():
  cmds = sweep.expand(os.path.join(REPO, "configs/tiny.py"),
                      os.path.join(REPO, "configs/sweeps/tiny_lr.py"), "/runs", ["--x=1"])
  assert len(cmds) == 4
  workdirs = {c[4] for c in cmds}
  assert len(workdirs) == 4
  assert "--workdir=/runs/learning_rate=0.001,warmup_steps=0" in workdirs
  assert all(c[-1] == "--x=1" for c in cmds)
  assert any("--config.optimizer.learning_rate=0.003" in c for c in cmds)


def test_sweep_rejects_unknown_keys(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_sweep():\n  return [{'optimizer.learning_rat': 1.0}]\n")
  with pytest.raises(SystemExit, match="'optimizer.learning_rat' is not in the config"):
    sweep.expand(os.path.join(REPO, "configs/tiny.py"), str(bad), "/runs")


def test_slurm_and_tpu_scripts_are_valid_bash():
  for script in ("slurm.sbatch", "tpu_pod.sh"):
    subprocess.run(["bash", "-n", os.path.join(REPO, "launch", script)], check=True)
