"""The sampling benchmark runs end to end on tiny models: the CPU smoke run of the script whose
GPU table the README reports (benchmarks/sample.py)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sample_benchmark_prints_a_row_per_requested_configuration():
  rows = ("cascade512_b1", "amused")
  out = subprocess.run(
      [sys.executable, "benchmarks/sample.py", "--tiny", f"--rows={','.join(rows)}",
       "--runs=1", "--warmup=0"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  table = out.stdout.rsplit("\ndevice:", 1)[-1].splitlines()
  header = table[1].split()
  assert header[:3] == ["row", "batch", "px"]
  for name in rows:
    line = next(l for l in table if l.startswith(name + " "))
    # row batch px params compile latency img/s vq steps x fwd sampler ...
    values = line.split()
    assert float(values[5]) > 0 and float(values[6]) > 0, line
    steps = {"cascade512_b1": "8", "amused": "12"}[name]
    assert values[8] == steps, line
