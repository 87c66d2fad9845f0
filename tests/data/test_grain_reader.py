"""The grain reader and the record offset index: global shuffle, process sharding, corrupt
records, indexes written by precompute or built on first use, a real two-process read."""
import collections
import io
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from muse_jax.data import grain_reader, record_index, records
from muse_jax.precompute import shards
from muse_jax.data import input_pipeline as ip
from tests.data.test_input_pipeline import (COUNTS, REPO, SPEC, _bad_records, _config, _ids,
                                            _record, _source, _Stage, write_dataset)

N = sum(COUNTS)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("grain")
  return str(root), write_dataset(str(root))


def _shard_of(recs):
  """{example id: train shard index} of write_dataset's layout."""
  out, k, left = {}, 0, COUNTS[0]
  for r in recs["train"]:
    while left == 0:
      k += 1
      left = COUNTS[k]
    out[int(r["id"][1:])] = k
    left -= 1
  return out


def test_shuffle_is_global_and_covers_every_record_once_per_epoch(data):
  root, recs = data
  src = _source(root, batch=2)
  ids = sum((_ids(next(src)) for _ in range(3 * N // 2)), [])  # three epochs
  train = sorted(int(r["id"][1:]) for r in recs["train"])
  for e in range(3):
    assert sorted(ids[e * N:(e + 1) * N]) == train
  assert len({tuple(ids[e * N:(e + 1) * N]) for e in range(3)}) == 3  # reshuffled each epoch
  # Not a file-by-file order: the first ten records already come from most of the shards.
  shard = _shard_of(recs)
  assert len({shard[i] for i in ids[:10]}) >= 4
  runs = sum(shard[a] != shard[b] for a, b in zip(ids[:N], ids[1:N]))
  assert runs > N // 2


@pytest.mark.parametrize("pc", [2, 3])
def test_processes_read_disjoint_records_that_cover_the_split(data, pc):
  root, recs = data
  one_epoch, seen = [], collections.Counter()
  for pi in range(pc):
    src = _source(root, batch=pc, pi=pi, pc=pc)  # one record per process and batch
    ids = [_ids(next(src))[0] for _ in range(N)]  # global positions pi, pi + pc, ...
    seen.update(ids)
    share = len(range(pi, N, pc))  # this process's share of the first epoch
    assert len(set(ids[:share])) == share
    one_epoch += ids[:share]
  train = sorted(int(r["id"][1:]) for r in recs["train"])
  assert sorted(one_epoch) == train  # disjoint shares that make up the epoch
  assert seen == {i: pc for i in train}  # pc epochs of the global stream, each record pc times


def test_corrupt_records_are_skipped_counted_and_named(tmp_path, caplog):
  recs = write_dataset(str(tmp_path), extra=_bad_records())  # 3 corrupt among 38 per epoch
  valid = sorted([int(r["id"][1:]) for r in recs["train"]] + [999])
  src = _source(tmp_path, batch=5)
  ids = sum((_ids(next(src)) for _ in range(14)), [])  # 70 valid: two epochs of 35
  assert sorted(ids[:35]) == valid and sorted(ids[35:]) == valid
  state = src.get_state()
  assert state["corrupt"] == [state["positions"][0] - 70]
  assert state["corrupt"][0] in (5, 6)  # the last record of epoch 2 may be a corrupt one
  assert "train-00000-00000.tfrecord (bad_value 1, wrong_size 2)" in caplog.text
  assert "train-00000-00001" not in caplog.text
  resumed = _source(tmp_path, batch=5)  # resume past the gaps stays exact
  resumed.set_state(json.loads(json.dumps(state)))
  for _ in range(3):
    np.testing.assert_array_equal(next(resumed)["tokens"], next(src)["tokens"])
  assert resumed.get_state() == src.get_state()


def test_resume_after_many_epochs_is_exact_and_reads_nothing_before(data, monkeypatch):
  """set_state at position p reads no record before p (grain sets its index)."""
  root, _ = data
  src = _source(root, batch=4)
  for _ in range(60):  # 240 records: seven epochs
    next(src)
  state = src.get_state()
  want = [next(src) for _ in range(2)]
  src.close()
  reads = []
  frame = record_index.ShardedRecords.frame
  # Only the resumed source's reads count: the closed source's read-ahead threads can still
  # finish a read or two of their own records object on a loaded machine.
  monkeypatch.setattr(record_index.ShardedRecords, "frame",
                      lambda self, k, i: (self is not src.records and reads.append((k, i)))
                      or frame(self, k, i))
  config = _config(root, batch=4)
  config.data.update(dict(grain_threads=1, grain_prefetch=8))
  resumed = ip.make_token_source(_Stage(config), "train", 0, 1)
  resumed.set_state(state)
  got = [next(resumed) for _ in range(2)]
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g["tokens"], w["tokens"])
    np.testing.assert_array_equal(g["text"], w["text"])
  # Two batches and the read-ahead (8 records, and up to 3 batches more being formed); not the
  # 240 records before the position.
  assert 8 <= len(reads) <= 64, len(reads)


def test_precompute_writes_the_index_and_old_shards_get_one_on_first_use(tmp_path, caplog,
                                                                       monkeypatch):
  rng = np.random.default_rng(3)
  recs = [records.encode_example(_record(i, rng), SPEC) for i in range(6)]
  path = str(tmp_path / "a.tfrecord")
  w = shards.ShardWriter(path)
  w.write(recs[:4])
  w.write(recs[4:])
  w.finish()
  offsets = np.fromfile(record_index.index_path(path), "<u8")
  np.testing.assert_array_equal(offsets, record_index.scan_offsets(path))
  assert offsets[-1] == os.path.getsize(path) and len(offsets) == 7
  src = record_index.ShardedRecords([path], [6])
  assert [src[j][1] for j in range(6)] == recs

  os.remove(record_index.index_path(path))  # a shard written before indexes existed
  assert record_index.ensure_indexes([path], [6]) == 1
  assert "building the record index of 1 of 1 shards" in caplog.text
  np.testing.assert_array_equal(np.fromfile(record_index.index_path(path), "<u8"), offsets)
  assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]
  assert record_index.ensure_indexes([path], [6]) == 0  # found and valid: nothing to do
  with open(record_index.index_path(path), "r+b") as f:  # a stale index is rebuilt
    f.truncate(16)
  assert record_index.ensure_indexes([path], [6]) == 1
  with pytest.raises(ValueError, match=r"a.tfrecord holds 6 records, its manifest 7: rerun"):
    record_index.ensure_indexes([path], [7])
  os.remove(record_index.index_path(path))  # and a read-only shard directory (as root here,
  # chmod would not stop the write, so the write raises what the filesystem would)

  def unwritable(shard, offsets):
    raise PermissionError(13, "Permission denied", record_index.index_path(shard))

  monkeypatch.setattr(record_index, "write_index", unwritable)
  with pytest.raises(ValueError, match=r"cannot write the record index beside .*a.tfrecord "
                     r"\(\[Errno 13\] Permission denied.*set data.reader=tf"):
    record_index.ensure_indexes([path], [6])
  monkeypatch.undo()
  with open(path, "ab") as f:  # a torn last record
    f.write(b"\x05" + b"\x00" * 10)
  with pytest.raises(ValueError, match=r"cannot index .*a.tfrecord: truncated"):
    record_index.ensure_indexes([path], [6])


def test_shuffle_seed_is_a_32_bit_function_of_the_config_seed():
  seeds = [grain_reader.shuffle_seed(s) for s in (0, 1, -1, 2**40)]
  assert len(set(seeds)) == 4 and all(0 <= s < 2**32 for s in seeds)
  assert grain_reader.shuffle_seed(7) == grain_reader.shuffle_seed(7)


def test_two_processes_read_disjoint_records(data):
  """Two real processes (gloo, jax.distributed), as on a cluster: disjoint reads and the
  state's positions gathered from both (get_state is a collective). Several seconds: two
  interpreters import JAX and set up gloo."""
  root, recs = data
  code = f"""
import json, sys, types
import jax
from muse_jax.parallel import distributed
distributed.initialize("localhost:{{port}}", 2, int(sys.argv[1]), cpu_collectives="gloo")
from configs import tiny
from muse_jax.data import input_pipeline as ip
from muse_jax.training.base_stage import BaseStage
c = tiny.get_config()
c.model.update(dict(grid_size=4, text_length=8))
c.data.update(dict(source='precomputed', path={root!r}))
c.train.batch_size = 2
st = types.SimpleNamespace(config=c)
st.features = lambda: BaseStage.features(st)
src = ip.make_token_source(st, 'train', jax.process_index(), jax.process_count())
ids = []
for _ in range({N // 2}):
  t = next(src)['tokens']
  ids += [int(a) + 64 * int(b) for a, b in t[:, :2]]
print(json.dumps(dict(ids=ids, state=src.get_state())))
"""
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    port = sock.getsockname()[1]
  code = code.replace("{port}", str(port))
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=180) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  got = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
  a, b = got[0]["ids"], got[1]["ids"]
  assert not set(a) & set(b) and sorted(a + b) == sorted(int(r["id"][1:]) for r in recs["train"])
  assert got[0]["state"] == got[1]["state"] == {"reader": "grain", "batches": N // 2,
                                                "positions": [N // 2, N // 2], "corrupt": [0, 0]}


def test_a_resumed_training_run_sees_the_batches_of_an_uninterrupted_one(data, tmp_path):
  """The loop saves the reader's state in each Orbax checkpoint and restores it: a run resumed
  from step 4 logs the losses and ends with the parameters of one that never stopped, with an
  eval every 4 steps restarting the eval reader between. The slowest test of this file: two
  tiny in-process training runs, each compiling its train and eval steps."""
  import shutil

  from muse_jax.training.loop import Trainer, read_metrics
  from tests.training.helpers import flat, tiny_config
  root, _ = data
  c = tiny_config(num_steps=8, batch_size=8, log_every=1, eval_every=4, eval_batches=1)
  c.data.update(dict(source="precomputed", path=root))
  c.checkpoint.update(dict(every_steps=4, async_save=False))
  full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
  a = Trainer(c, full).run()
  shutil.copytree(full, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "8"))  # as if stopped after step 4
  log = io.StringIO()
  b = Trainer(c, resumed, stream=log).run()
  assert "Resuming from step 4" in log.getvalue()
  losses = [[r["loss"] for r in read_metrics(w) if "loss" in r] for w in (full, resumed)]
  assert len(losses[0]) == 8 and losses[0] == losses[1]
  pa, pb = flat(a.state), flat(b.state)
  for k in pa:
    np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
