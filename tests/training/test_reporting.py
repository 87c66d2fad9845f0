"""metrics.jsonl on resume: records past the restored step go, and no damaged line blocks it.
The progress line's rates and ETA count training time only.

A real resume past a torn last line is in test_trainer.py::test_restore_onto_a_different_mesh.
"""
import io
import json
import logging
import types

import pytest

from muse_jax.training import reporting
from muse_jax.training.reporting import Reporter


def _line(step):
  return json.dumps({"step": step, "loss": 1.0 / step}) + "\n"


def _reopen(workdir, step):
  Reporter(str(workdir), total_steps=10, start_step=step, enabled=True,
           tensorboard=False).close()
  return open(workdir / "metrics.jsonl", "rb").read()


def test_damaged_lines_are_dropped_with_one_warning(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  blob = _line(1) + _line(2) + "\0" * 12 + "\n" + _line(3) + "[3]\n" + _line(4) + _line(5)
  path.write_text(blob + _line(6)[:9])  # a crash mid-append of step 6 tore its line
  with caplog.at_level(logging.WARNING):
    kept = _reopen(tmp_path, 4)
  assert kept == "".join(_line(s) for s in (1, 2, 3, 4)).encode()
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1, warnings
  assert "dropped 3 line(s)" in warnings[0]
  assert "line 3, line 5, line 8 (the last)" in warnings[0]
  assert (tmp_path / "metrics.jsonl.dropped").read_bytes() == (
      b"\0" * 12 + b"\n[3]\n" + _line(6)[:9].encode() + b"\n")
  # A last record that lost only its newline is whole: it stays, and the newline comes back.
  path.write_text(_line(1) + _line(2).rstrip("\n"))
  assert _reopen(tmp_path, 4) == (_line(1) + _line(2)).encode()


def test_rates_and_eta_leave_out_paused_time(tmp_path, monkeypatch):
  """Time in `paused()` (evaluation, hooks, saves) is not training time: a line printed after
  a long pause shows the steps' own rate and an ETA at that rate, and the pause is not taken
  off the next interval again."""
  now = [0.0]
  monkeypatch.setattr(reporting, "time", types.SimpleNamespace(
      perf_counter=lambda: now[0], monotonic=lambda: now[0]))
  out = io.StringIO()
  r = Reporter(str(tmp_path), total_steps=100, start_step=0, enabled=True, tensorboard=False,
               stream=out)
  now[0] = 30.0  # the first step, with its compilation
  assert r.reset_timer(1) == 30.0
  now[0] += 9.0  # steps 2..10 at 1 step/s
  with r.paused():
    now[0] += 50.0
    with r.paused():  # a nested block counts once
      now[0] += 50.0
  now[0] += 10.0  # steps 11..20
  rates = r.console(20, {"loss": 0.5}, examples_per_step=8, flops_per_step=0, peak_flops=0)
  assert rates["steps_per_sec"] == pytest.approx(1.0)
  assert rates["examples_per_sec"] == pytest.approx(8.0)
  line = out.getvalue().splitlines()[-1]
  assert "| 1 steps/s | 8 ex/s | ETA 1:20" in line, line  # 80 steps left; not 0.16 steps/s
  now[0] += 5.0  # steps 21..30 at 2 steps/s, no pause
  rates = r.console(30, {"loss": 0.5}, examples_per_step=8, flops_per_step=0, peak_flops=0)
  assert rates["steps_per_sec"] == pytest.approx(2.0)
  assert out.getvalue().splitlines()[-1].endswith("| 2 steps/s | 16 ex/s | ETA 0:35")
  r.close()
