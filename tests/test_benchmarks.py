"""The sampling, attention, dispatch and evaluation benchmarks run end to end on CPU: smoke
runs, so the scripts that measure the GPU figures of docs/performance.md (benchmarks/sample.py,
attention.py, dispatch.py, evaluate.py) keep working and keep their table layout without a
GPU."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("rows,flags", [(("cascade512_b1", "amused"), ["--sr_guidance=0"]),
                                        (("amused",), ["--fp8"])])
def test_sample_benchmark_prints_a_row_per_requested_configuration(rows, flags):
  out = subprocess.run(
      [sys.executable, "benchmarks/sample.py", "--tiny", f"--rows={','.join(rows)}",
       "--runs=1", "--warmup=0"] + flags,
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  header = out.stdout.splitlines()[0]
  assert f"fp8={'--fp8' in flags}" in header
  assert f"sr_guidance={0.0 if '--sr_guidance=0' in flags else 4.0}" in header
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


def test_attention_benchmark_prints_its_table():
  out = subprocess.run(
      [sys.executable, "benchmarks/attention.py", "--cases=amused_cross", "--calls=1",
       "--dq_blocks=32,64,4", "--forward_blocks=64,128,4,2/128,64,8,3"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  row = next(l for l in out.stdout.splitlines() if l.startswith("| amused_cross | xla |"))
  us, note = row.split("|")[3:5]
  assert float(us) > 0 and float(note.split()[-1]) < 1e-2, row  # rel err against float32


def test_attention_benchmark_sweeps_every_combination_of_the_pallas_settings():
  import argparse
  from benchmarks.attention import blocks_arg, pallas_settings
  assert blocks_arg("64,64,4") == [(64, 64, 4, 2)]
  forward = blocks_arg("64,128,4,2/128,64,8,3")
  assert forward == [(64, 128, 4, 2), (128, 64, 8, 3)]
  for bad in ("64,64", "64,64,4,2,1", "64,0,4", "64,64,4/", "a,b,c"):
    with pytest.raises(argparse.ArgumentTypeError):
      blocks_arg(bad)
  assert pallas_settings(None, None, None) == [
      ("pallas", dict(forward=None, dq=None, dkdv=None))]
  runs = pallas_settings(forward, None, blocks_arg("32,64,4/64,64,4,3"))
  assert [label for label, _ in runs] == [
      "pallas forward=64,128,4,2 dkdv=32,64,4,2", "pallas forward=64,128,4,2 dkdv=64,64,4,3",
      "pallas forward=128,64,8,3 dkdv=32,64,4,2", "pallas forward=128,64,8,3 dkdv=64,64,4,3"]
  assert runs[3][1] == dict(forward=(128, 64, 8, 3), dq=None, dkdv=(64, 64, 4, 3))
  from benchmarks.attention import mgpu_arg
  assert mgpu_arg("64,128,2,64,64,64,64/128,128,3,64,128,64,128") == [
      (64, 128, 2, 64, 64, 64, 64), (128, 128, 3, 64, 128, 64, 128)]
  with pytest.raises(argparse.ArgumentTypeError):
    mgpu_arg("64,128,2")


def test_dispatch_benchmark_times_each_argument_count():
  out = subprocess.run(
      [sys.executable, "benchmarks/dispatch.py", "--args=1,30", "--calls=5"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [l.split("|")[1:4] for l in out.stdout.splitlines() if l.startswith("| default")
          or l.startswith("| sampler")]
  assert [(o.strip(), int(n)) for o, n, _ in rows] == [("default", 1), ("default", 30),
                                                       ("sampler", 1), ("sampler", 30)]
  assert all(float(us) > 0 for _, _, us in rows)


def _row(profile=None):
  # A row shaped like the aMUSEd row (12 steps, no sampler overhead) whose forwards take longer
  # than both floors: name_limit must call it "forward above floors".
  return dict(steps=12, forward_s=2.6e-3, compute_floor_s=7.3e-3 / 12,
              weight_floor_s=3.0e-3 / 12, sampler_s=0.0, profile=profile)


def test_limit_names_the_profiles_largest_share_of_a_slow_forward():
  sys.path.insert(0, ROOT)
  from benchmarks.sample_report import name_limit
  assert name_limit(_row()) == "forward above floors (77%)"
  # A profile where matmuls take most of the call and no time is idle: the limit names small
  # matmuls. Then one where most of the call is idle: it names the kernel launches.
  gemms = dict(latency_ms=29.9, busy_ms=29.9,
               by_category_ms={"matmul": 18.8, "attention": 4.8, "fusion/elementwise": 4.4,
                               "copy/transpose": 1.8, "other": 0.1})
  assert name_limit(_row(gemms)) == ("forward above floors (77%): small matmuls 63% of the "
                                     "call")
  gaps = dict(latency_ms=30.0, busy_ms=12.0, by_category_ms={"matmul": 8.0, "attention": 4.0})
  assert name_limit(_row(gaps)).endswith("kernel launches (idle gaps) 60% of the call")


# Two fusions of a GPU train step's optimized HLO, as `compiled.as_text()` prints them
# (layouts, metadata and all): the kernel of the second is named `loop_add_fusion_33`.
_HLO = """
%fused_mul.31 (param_0.1: bf16[8]) -> (bf16[8], bf16[8]) {
  %param_0.1 = bf16[8]{0} parameter(0)
  %constant_1 = bf16[] constant(0.5)
  %broadcast.1 = bf16[8]{0} broadcast(%constant_1), dimensions={}
  %convert.1 = f32[8]{0} convert(%param_0.1), metadata={op_name="jit(f)/convert"}
  %tanh.1 = f32[8]{0} tanh(%convert.1)
  %convert.2 = bf16[8]{0} convert(%tanh.1)
  %multiply.1 = bf16[8]{0} multiply(%convert.2, %broadcast.1)
  ROOT %tuple.1 = (bf16[8]{0}, bf16[8]{0}) tuple(%multiply.1, %convert.2)
}

%fused_add.33 (param_0.2: bf16[8]) -> bf16[8] {
  %param_0.2 = bf16[8]{0} parameter(0)
  ROOT %add.1 = bf16[8]{0} add(%param_0.2, %param_0.2)
}

ENTRY %main.1 (p0: bf16[8]) -> bf16[8] {
  %p0 = bf16[8]{0} parameter(0)
  %loop_convert_multiply_fusion = (bf16[8]{0}, bf16[8]{0}) fusion(%p0), calls=%fused_mul.31
  %gte = bf16[8]{0} get-tuple-element(%loop_convert_multiply_fusion), index=0
  ROOT %loop_add_fusion.33 = bf16[8]{0} fusion(%gte), kind=kLoop, calls=%fused_add.33
}
"""


def test_profile_names_what_each_fusion_computes():
  sys.path.insert(0, ROOT)
  from benchmarks.trace_summary import fusion_summaries
  out = fusion_summaries(_HLO, ["loop_add_fusion_33", "loop_convert_multiply_fusion",
                                "nvjet_sm90_gemm", "input_reduce_fusion_9"])
  assert out == {  # bytes: the fused computation's parameters and the fusion's outputs
      "loop_add_fusion_33": ("bf16[8] <- add", 16 + 16),
      "loop_convert_multiply_fusion": ("(bf16[8], bf16[8]) <- convert x2, broadcast, tanh, "
                                       "multiply", 16 + 32)}


def test_fusion_lines_give_bytes_and_rates_per_call():
  sys.path.insert(0, ROOT)
  from benchmarks.trace_summary import fusion_lines
  described = {"loop_add_fusion": ("bf16[64,256,6144] <- add", 603_979_776),
               "input_reduce_fusion": ("f32[16384] <- reduce", 50_397_184)}
  by_name = {"loop_add_fusion": 4096.0, "input_reduce_fusion": 1600.0}  # us per step
  launches = {"loop_add_fusion": 48, "input_reduce_fusion": 96}  # over 3 profiled steps
  lines = fusion_lines(described, by_name, launches, calls=3)
  # 16 calls x 604.0 MB in 4.096 ms: 2.36 TB/s; 32 x 50.4 MB in 1.6 ms: 1.01 TB/s
  assert lines[1] == ("     4.096 ms   16x    604.0 MB  2.36 TB/s  loop_add_fusion: "
                      "bf16[64,256,6144] <- add")
  assert lines[2].startswith("     1.600 ms   32x     50.4 MB  1.01 TB/s  input_reduce_fusion")
  assert lines[3] == "  together 5.70 ms, 11.28 GB: 1.98 TB/s"


def test_shape_bytes():
  sys.path.insert(0, ROOT)
  from benchmarks.trace_summary import shape_bytes
  assert shape_bytes("bf16[64,256,6144]{2,1,0}") == 64 * 256 * 6144 * 2
  assert shape_bytes("(f32[16,1536]{1,0}, pred[3], s32[])") == 16 * 1536 * 4 + 3 + 4
  assert shape_bytes("f8e4m3fn[128,64]{1,0}") == 128 * 64


def test_kernel_times_average_the_profiled_calls_per_call(tmp_path):
  """Only the GPU's kernels count, per call, by category and by name; launches are totals."""
  import gzip
  import json
  sys.path.insert(0, ROOT)
  from benchmarks.trace_summary import kernel_times
  meta = [{"ph": "M", "name": "process_name", "pid": p, "args": {"name": n}}
          for p, n in ((1, "/device:GPU:0"), (2, "/host:CPU"))]
  kernels = [("nvjet_gemm", 30.0), ("loop_add_fusion", 4.0), ("flash_fwd", 10.0)] * 2
  events = meta + [{"ph": "X", "pid": 1, "name": n, "dur": d} for n, d in kernels]
  events.append({"ph": "X", "pid": 2, "name": "nvjet_gemm", "dur": 1000.0})  # host: ignored
  with gzip.open(tmp_path / "x.trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  by_cat, by_name, launches = kernel_times(str(tmp_path), calls=2)
  assert by_cat == {"matmul": 30.0, "fusion/elementwise": 4.0, "attention": 10.0}
  assert by_name == {"nvjet_gemm": 30.0, "loop_add_fusion": 4.0, "flash_fwd": 10.0}
  assert launches == {"nvjet_gemm": 2, "loop_add_fusion": 2, "flash_fwd": 2}


def test_floor_splits_the_step_into_attention_matmuls_and_the_rest():
  sys.path.insert(0, ROOT)
  from benchmarks.trace_summary import floor_lines
  by_cat = {"attention": 65_000.0, "matmul": 48_000.0, "fusion/elementwise": 40_000.0,
            "copy/transpose": 3_000.0}  # microseconds per step
  text = "\n".join(floor_lines(by_cat, flops=62.4e12, attention_flops=28.8e12, peak=1e15,
                               goal_mfu=50))
  assert "attention kernels    65.00 ms  443 TFLOP/s" in text
  assert "matmul kernels       48.00 ms  700 TFLOP/s" in text
  assert "other kernels        43.00 ms" in text
  # 62.4 TFLOP in 156 ms of kernels at 1 PFLOP/s is 40%; in 113 ms of attention and matmuls 55.2%
  assert "MFU of the kernel time 40.0%; with no other kernel time 55.2%" in text
  assert "50% MFU is a 124.8 ms step: the other kernels within 11.8 ms (now 43.0 ms)" in text
  # The same step's kernels summed over two devices that each do half the FLOPs, and its wall
  # time: every figure per device, the same as above.
  two = {k: 2 * v for k, v in by_cat.items()}
  text2 = "\n".join(floor_lines(two, flops=124.8e12, attention_flops=57.6e12, peak=1e15,
                                goal_mfu=50, step_s=0.160, devices=2))
  wall = "\n  the step's wall time 160.0 ms: 4.0 ms beyond its kernels' time"
  assert text2 == text.replace("(the floor at these rates)",
                               "(the floor at these rates)" + wall), text2


def test_profile_step_times_the_step_then_profiles_it(tmp_path):
  """The GPU floor tables take the step's wall time and its profile from one compile: on CPU
  the trace has no GPU kernels, so only the timed steps' line has figures."""
  out = subprocess.run(
      [sys.executable, "benchmarks/profile_step.py", "--config=configs/tiny.py",
       f"--out={tmp_path}", "--steps=1", "--timed_steps=2", "--fusions=0"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  step = next(l for l in out.stdout.splitlines() if l.startswith("== step: "))
  assert float(step.split()[2]) > 0 and "(2 steps without the profiler)" in step, step


def test_evaluate_benchmark_times_each_network_and_projects_an_fid():
  out = subprocess.run([sys.executable, "benchmarks/evaluate.py", "--tiny"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]]
          for l in out.stdout.splitlines() if l.startswith("| ") and not l.startswith("| row")}
  assert set(rows) == {"inception", "clip_image:tiny", "clip_text:tiny"}
  for name, (batch, first, ms, rate, plus) in rows.items():
    assert batch == "2" and float(first) > 0 and float(ms) > 0 and float(rate) > 0, name
  # The rate with the statistics is timed apart from the network's; on a machine running other
  # tests either can be the faster, so only the projection's use of it is checked.
  assert float(rows["inception"][4]) > 0
  fid_line = next(l for l in out.stdout.splitlines() if l.startswith("projected FID of 100 "))
  seconds = float(fid_line.split(": ")[1].split(" s ")[0])
  assert seconds > 100 / float(rows["inception"][4]), fid_line   # images plus the distance
  assert any(l.startswith("projected CLIP score (tiny) of 100 pairs") for l in
             out.stdout.splitlines())


def test_input_reader_benchmark_prints_every_part(tmp_path):
  out = subprocess.run(
      [sys.executable, "benchmarks/input_reader.py", "--readers=grain", "--records=32",
       "--per_shard=8", "--batch=4", "--batches=2", "--warmup=1", "--repeat=1", "--big=4000",
       "--per_big_shard=1000", "--memory_batches=3", f"--workdir={tmp_path}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [[c.strip() for c in l.split("|")[1:-1]] for l in out.stdout.splitlines()
          if l.startswith("| ") and not l.startswith("| part")]
  assert [r[:2] for r in rows] == [
      ["throughput", "grain"], ["formats", "tfrecord+index"],
      ["formats", "array_record (brotli)"], ["formats", "array_record (uncompressed)"],
      ["resume", "grain, 4,000 records"], ["resume", "grain, 4,000 records"],
      ["memory", "grain, 4 records"], ["memory", "grain, 4,000 records"]]
  assert float(rows[0][2].split()[0].replace(",", "")) > 0
  assert rows[5][2].startswith("position 2,000: ")


def test_train_step_benchmark_times_a_demo_stage_as_the_demo_builds_it():
  """--demo_stage: the stage config muse_jax.demo derives from a demo config (its codebook,
  grids and text shapes filled in), with the demo config's own overrides applied."""
  out = subprocess.run(
      [sys.executable, "benchmarks/train_step.py", "--config=configs/demo_cpu.py",
       "--demo_stage=sr", "--config.sr.train.batch_size=8", "--config.sr.model.num_layers=1",
       "--steps=1", "--warmup=0"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1)
              for line in out.stdout.split("== train_step\n", 1)[1].splitlines() if line)
  assert rows["batch (global / per device)"].startswith("8 / ")
  assert rows["attention / remat / scan"] == "xla / none / False"  # demo_cpu's SR model
  assert float(rows["step time"].split()[0]) > 0


def test_text_order_benchmark_swaps_the_colours_and_prints_the_ratio():
  sys.path.insert(0, ROOT)
  from benchmarks.text_order import swapped_pairs
  from muse_jax.data.shapes import grammar
  for a, b in swapped_pairs(8, 0, dict(max_count=4, two_group_prob=0.5, object_scale=1.0)):
    ga, gb = grammar.parse_caption(a).groups, grammar.parse_caption(b).groups
    assert a != b and [g.shape for g in ga] == [g.shape for g in gb]
    assert [g.colour for g in ga] == [g.colour for g in gb][::-1], (a, b)
  out = subprocess.run(
      [sys.executable, "benchmarks/text_order.py", "--config=configs/demo_cpu.py", "--num=16"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  ratio = next(l for l in out.stdout.splitlines() if l.startswith("ratio")).split()[1:]
  assert all(0 < float(v) < 1 for v in ratio), out.stdout


def test_scaling_finds_every_process_below_a_launcher():
  """The kill-and-resume check SIGKILLs a launcher and every process below it: the workers
  (children) and anything they started (grandchildren) must all be found."""
  from benchmarks.scaling import descendants
  proc = subprocess.Popen(["sh", "-c", "sleep 60 & sh -c 'sleep 60 & wait' & wait"])
  try:
    for _ in range(100):  # until both sleeps have started
      found = descendants(proc.pid)
      names = []
      for pid in found:
        try:
          with open(f"/proc/{pid}/comm") as f:
            names.append(f.read().strip())
        except OSError:
          pass
      if names.count("sleep") == 2:
        break
      time.sleep(0.05)
    assert sorted(names) == ["sh", "sleep", "sleep"], names
    assert proc.pid not in found
  finally:
    for pid in [proc.pid] + descendants(proc.pid):
      os.kill(pid, signal.SIGKILL)
    proc.wait()
