"""Scenes drawn in worker processes (data/workers.py): the precompute's `shapes` source with
data.shapes.processes and the vqgan stage's ImageSource with num_workers give the serial path's
records and batches, resume exactly, re-raise a worker's error and leave no process behind.

Each pool spawns real processes, so the tests share few.
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from muse_jax.configs import common_data
from muse_jax.data import preprocess, raw_sources
from muse_jax.data.batch import IndexedRowsSource
from muse_jax.data.images import ImageSource
from muse_jax.data.shapes import dataset as shapes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _spawned(before: set) -> list:
  """This process's child processes started since `before` was taken."""
  return [p for p in multiprocessing.active_children() if p not in before]


def _records(source, skip=0, threads=2, kill_after=None, before=frozenset()):
  raw = source.raw_examples()
  list(itertools.islice(raw, skip))
  counter = preprocess.SkipCounter()
  stream = preprocess.preprocess_stream(raw, preprocess.PreprocessOptions(resolutions=(32, 64)),
                                        counter, num_workers=threads)
  out = list(itertools.islice(stream, kill_after))
  if kill_after is not None:  # as a preemption's SIGTERM to every process of the job would
    os.kill(_spawned(before)[0].pid, signal.SIGKILL)
    out += list(stream)
  return [(ex["id"], ex["caption"], ex["image"][32].tobytes(), ex["image"][64].tobytes())
          for ex in out]


def test_precompute_scenes_drawn_by_processes_are_the_serial_records():
  before = set(multiprocessing.active_children())
  config = common_data.data_config()
  config.resolutions = (32, 64)
  config.shapes.update(dict(num_train=50, max_count=3, two_group_prob=0.7))
  serial = _records(raw_sources.make_source(config))
  config.shapes.processes = 2
  source = raw_sources.make_source(config)
  source.chunk = 8  # several chunks in flight, the last one short
  assert _records(source) == serial
  # A resumed precompute skips finished records without drawing them; the rest are the same.
  assert _records(source, skip=21, threads=1) == serial[21:]
  # A killed worker leaves the main process drawing the rest, the same records.
  assert _records(source, threads=1, kill_after=5, before=before) == serial
  source.close()
  assert not _spawned(before)


def test_image_batches_drawn_by_processes_are_the_serial_batches_and_resume():
  before = set(multiprocessing.active_children())
  kw = dict(seed=3, split="train", global_batch=4, process_index=1, process_count=2)
  serial = ImageSource("shapes", 32, **kw)
  want = [next(serial)["images"] for _ in range(8)]
  source = ImageSource("shapes", 32, num_workers=2, **kw)
  for b in want[:3]:
    np.testing.assert_array_equal(next(source)["images"], b)
  state = source.get_state()
  assert state == {"position": 3}
  source.set_state({"position": 1})  # batches drawn ahead are discarded
  np.testing.assert_array_equal(next(source)["images"], want[1])
  source.set_state(state)
  np.testing.assert_array_equal(next(source)["images"], want[3])
  assert len(_spawned(before)) == 2
  source.close()
  assert not _spawned(before)
  # Closed, it draws on from its position with new workers; a worker killed from outside
  # (SIGTERM to every process of a preempted job) leaves the main process drawing, the same.
  np.testing.assert_array_equal(next(source)["images"], want[4])
  os.kill(_spawned(before)[0].pid, signal.SIGKILL)
  source.set_state({"position": 5})
  for b in want[5:]:
    np.testing.assert_array_equal(next(source)["images"], b)
  assert source.num_workers == 0 and not _spawned(before)


class FailingSource(IndexedRowsSource):
  """Example 5 is corrupt (module level, so spawned workers can unpickle it)."""

  def example(self, index):
    if index == 5:
      raise ValueError(f"example {index} is corrupt")
    return {"x": np.full((2,), index, np.int32)}


def test_a_workers_error_is_raised_in_the_main_process():
  before = set(multiprocessing.active_children())
  source = FailingSource(global_batch=2, num_workers=2)
  assert next(source)["x"].tolist() == [[0, 0], [1, 1]]
  next(source)
  with pytest.raises(ValueError) as e:
    next(source)
  assert str(e.value) == "example 5 is corrupt"
  assert "in a worker process" in e.value.__notes__[0]  # with its traceback there
  source.close()
  assert not _spawned(before)


_CHILD = textwrap.dedent("""
    import os, multiprocessing, signal, sys, time
    from muse_jax.data.images import ImageSource
    from muse_jax.data.workers import ProcessPool
    if __name__ == "__mp_main__" and os.environ.get("STARTED_DIR"):
      # A spawned worker imports this script before it serves, as it would a training script
      # that imports JAX at its top: half a second there, after saying so.
      open(os.path.join(os.environ["STARTED_DIR"], str(os.getpid())), "w").close()
      time.sleep(0.5)
    if __name__ == "__main__":
      # A terminal's Ctrl-C, even where this test runs with SIGINT ignored (a background job).
      signal.signal(signal.SIGINT, signal.default_int_handler)
      starting = sys.argv[1] == "interrupt_starting"
      if starting:  # the pids once both workers are in that half second
        os.environ["STARTED_DIR"] = sys.argv[2]
        pool = ProcessPool(2)
        for _ in range(2):
          pool.submit(time.sleep, 0)
        while len(os.listdir(sys.argv[2])) < 2:
          time.sleep(0.01)
      else:
        source = ImageSource("shapes", 32, seed=0, split="train", global_batch=2,
                             num_workers=2)
        next(source)
      print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
      if sys.argv[1] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
      while starting:
        time.sleep(0.01)
      while True:
        next(source)
""")


def _alive(pid: int) -> bool:
  """Running (an orphan that exited stays a zombie until whoever adopted it reaps it)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


@pytest.mark.parametrize("how", ["kill", "interrupt", "interrupt_starting"])
def test_no_worker_outlives_its_main_process(how, tmp_path):
  """A main process killed outright or stopped by Ctrl-C leaves no drawing process behind, and
  a Ctrl-C prints the main process's traceback alone, also while its workers start."""
  script, started = tmp_path / "child.py", tmp_path / "started"
  script.write_text(_CHILD)
  started.mkdir()
  proc = subprocess.Popen([sys.executable, str(script), how, str(started)], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          start_new_session=True)
  try:
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    if how != "kill":
      os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the whole group
    _, err = proc.communicate(timeout=30)  # a live orphan would hold the pipes open
    if how != "kill":
      # Python ends on an uncaught KeyboardInterrupt by SIGINT; the workers print nothing.
      assert proc.returncode == -signal.SIGINT, err
      assert err.count("Traceback") == 1 and "KeyboardInterrupt" in err, err
    deadline = time.monotonic() + 10
    while any(map(_alive, pids)) and time.monotonic() < deadline:
      time.sleep(0.05)
    assert not any(map(_alive, pids))
  finally:  # a failed run leaves nothing drawing on the machine's cores
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    proc.wait()


def test_image_batches_draw_the_scenes_asked_for_on_workers_too():
  scenes = dict(max_count=1, two_group_prob=0.0, object_scale=1.5)
  kw = dict(seed=3, split="train", global_batch=4, scenes=scenes)
  want = np.stack([shapes.generate(i, "train", 3, 32, **scenes).image for i in range(8)])
  assert not np.array_equal(want, np.stack([shapes.generate(i, "train", 3, 32).image
                                            for i in range(8)]))
  for workers in (0, 2):
    source = ImageSource("shapes", 32, num_workers=workers, **kw)
    got = np.concatenate([next(source)["images"] for _ in range(2)])
    source.close()
    np.testing.assert_array_equal(got, want)
