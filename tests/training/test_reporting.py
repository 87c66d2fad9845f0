"""metrics.jsonl on resume: records past the restored step go, and no damaged line blocks it.

A real resume past a torn last line is in test_trainer.py::test_restore_onto_a_different_mesh.
"""
import json
import logging

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
