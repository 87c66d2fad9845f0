"""Training input over precomputed shards: order, exact resume, corruption, sharding, readers."""
import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from configs import tiny
from muse_jax.data import input_pipeline as ip, manifest, records
from muse_jax.parallel import sharding as shd
from muse_jax.parallel.distributed import global_batch
from muse_jax.parallel.mesh import make_mesh
from muse_jax.precompute import shards
from muse_jax.training.base_stage import BaseStage

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = records.RecordSpec(grid_lo=4, grid_hi=0, codebook_size=64, text_dim=24,
                          text_max_length=6)
COUNTS = (7, 9, 4, 8, 6)  # records per train file: 34 in all


def _record(idx, rng):
  n = int(rng.integers(1, SPEC.text_max_length + 1))
  tokens = rng.integers(0, 64, SPEC.tokens_lo)
  tokens[0], tokens[1] = idx % 64, idx // 64  # the example's identity
  emb = rng.standard_normal((n, SPEC.text_dim)).astype(np.float32)
  return {"id": f"e{idx}", "caption": f"c{idx}", "tokens_lo": tokens, "text_emb": emb,
          "text_len": n}


def write_dataset(root, splits=(("train", COUNTS), ("heldout", (5,))), extra=None):
  """A precompute output with synthetic records (no models); returns {split: [records]}."""
  os.makedirs(os.path.join(root, "shards"), exist_ok=True)
  os.makedirs(os.path.join(root, "index"), exist_ok=True)
  rng = np.random.default_rng(0)
  out, idx = {}, 0
  for split, counts in splits:
    entries, out[split] = [], []
    for k, n in enumerate(counts):
      recs = []
      for _ in range(n):
        ex = _record(idx, rng)
        out[split].append(ex)
        recs.append(records.encode_example(ex, SPEC))
        idx += 1
      if extra and k == 0 and split == "train":
        recs += extra
      name = shards.shard_name(split, 0, k) + ".tfrecord"
      records.write_tfrecord(os.path.join(root, "shards", name), recs)
      entries.append({"file": name, "process": 0, "shard": k, "records": len(recs),
                      "seen": len(recs), "skipped": {}, "notes": {}, "sha256": ""})
    with open(os.path.join(root, "index", f"{split}-00000.json"), "w") as f:
      json.dump({"shards": entries}, f)
  cfg = types.SimpleNamespace(to_json_best_effort=lambda: "{}")
  manifest.write_manifest(root, cfg, SPEC, [s for s, _ in splits], 1, {})
  return out


def _config(path, batch=4, reader="grain", seed=0, **model):
  c = tiny.get_config()
  c.model.update({"grid_size": 4, "text_length": 8, **model})
  c.data.update(dict(source="precomputed", path=str(path), shuffle_buffer=5, reader=reader))
  c.train.batch_size = batch
  c.seed = seed
  return c


class _Stage:
  def __init__(self, config):
    self.config = config

  def features(self):
    return BaseStage.features(self)


def _source(path, split="train", pi=0, pc=1, **kw):
  return ip.make_token_source(_Stage(_config(path, **kw)), split, pi, pc)


def _ids(batch):
  return [int(a) + 64 * int(b) for a, b in batch["tokens"][:, :2]]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("pre")
  return root, write_dataset(str(root))


@pytest.mark.parametrize("reader", ["grain", "tf", "numpy"])
def test_epochs_cover_every_example_in_a_seeded_order(data, reader):
  root, recs = data
  src = _source(root, reader=reader, batch=2)
  ids = sum((_ids(next(src)) for _ in range(34)), [])  # 2 epochs of 34
  train = sorted(int(r["id"][1:]) for r in recs["train"])
  assert sorted(ids[:34]) == train and sorted(ids[34:]) == train
  assert ids[:34] != ids[34:]  # reshuffled each epoch
  assert ids[:34] != sorted(ids[:34])
  again = _source(root, reader=reader, batch=2)
  assert sum((_ids(next(again)) for _ in range(17)), []) == ids[:34]
  other = _source(root, reader=reader, batch=2, seed=1)
  assert sum((_ids(next(other)) for _ in range(17)), []) != ids[:34]


@pytest.mark.parametrize("reader", ["grain", "tf", "numpy"])
def test_resume_is_exact(data, reader):
  root, _ = data
  src = _source(root, reader=reader)
  batches = [next(src) for _ in range(13)]  # 52 examples: past the first epoch (34)
  for stop in (0, 5, 9):
    src = _source(root, reader=reader)
    for _ in range(stop):
      next(src)
    state = json.loads(json.dumps(src.get_state()))  # what the checkpoint holds
    resumed = _source(root, reader=reader)
    resumed.set_state(state)
    for want in batches[stop:]:
      got = next(resumed)
      assert got.keys() == want.keys()
      for k in want:
        np.testing.assert_array_equal(got[k], want[k])
  assert state["batches"] == 9 and state["reader"] == reader


@pytest.mark.parametrize("reader", ["grain", "tf", "numpy"])
def test_batch_contents_and_padding(data, reader):
  root, recs = data
  by_id = {int(r["id"][1:]): r for r in recs["train"]}
  src = _source(root, reader=reader)
  for _ in range(3):
    b = next(src)
    assert b["tokens"].shape == (4, 16) and b["tokens"].dtype == np.int32
    assert b["text"].shape == (4, 8, 24) and b["text"].dtype == np.float32
    assert b["text_len"].dtype == np.int32
    for row, i in enumerate(_ids(b)):
      r, n = by_id[i], by_id[i]["text_len"]
      assert b["text_len"][row] == n
      np.testing.assert_array_equal(b["tokens"][row], r["tokens_lo"])
      want = r["text_emb"].astype(records.EMB_DTYPE).astype(np.float32)
      np.testing.assert_array_equal(b["text"][row, :n], want)
      assert not b["text"][row, n:].any()


@pytest.mark.parametrize("reader", ["grain", "tf", "numpy"])
def test_eval_split_restarts_in_file_order(data, reader):
  root, recs = data
  src = _source(root, split="eval", reader=reader, batch=2)
  first = [_ids(next(src)) for _ in range(3)]
  assert sum(first, [])[:5] == [int(r["id"][1:]) for r in recs["heldout"]]
  src.set_state({"position": 0})  # how the loop restarts eval
  assert [_ids(next(src)) for _ in range(3)] == first


@pytest.mark.parametrize("reader", ["tf", "numpy"])
def test_processes_read_disjoint_complete_slices(data, reader):
  root, recs = data
  train = sorted(int(r["id"][1:]) for r in recs["train"])
  for pc in (2, 3):  # by file
    seen = []
    for pi in range(pc):
      src = _source(root, reader=reader, batch=pc, pi=pi, pc=pc)
      files, per_epoch, by_record = ip.process_files(
          *ip.split_files(str(root), "train")[:2], pi, pc)
      assert not by_record
      seen.append(sum((_ids(next(src)) for _ in range(per_epoch)), []))
      assert len(set(seen[-1])) == per_epoch
    assert sorted(sum(seen, [])) == train
  held = [int(r["id"][1:]) for r in recs["heldout"]]  # one file: split by record
  for pi in range(2):
    src = _source(root, split="eval", reader=reader, batch=4, pi=pi, pc=2)
    assert _ids(next(src)) == held[pi::2][:2]


def _bad_records():
  good = _record(999, np.random.default_rng(5))
  wrong_tokens = records.encode_features({
      "id": b"bad1", "caption": b"c", "text_len": [1], "tokens_lo": b"\x00" * 6,
      "text_emb": b"\x00" * 48})
  wrong_len = records.encode_features({
      "id": b"bad2", "caption": b"c", "text_len": [3], "text_emb": b"\x00" * 48,
      "tokens_lo": np.zeros(16, "<u2").tobytes()})
  big_id = records.encode_features({
      "id": b"bad3", "caption": b"c", "text_len": [1], "text_emb": b"\x00" * 48,
      "tokens_lo": np.full(16, 64, "<u2").tobytes()})
  return [wrong_tokens, records.encode_example(good, SPEC), wrong_len, big_id]


@pytest.mark.parametrize("reader", ["tf", "numpy"])
def test_corrupt_records_are_skipped_and_counted(tmp_path, reader, caplog):
  recs = write_dataset(str(tmp_path), extra=_bad_records())
  valid = sorted([int(r["id"][1:]) for r in recs["train"]] + [999])
  src = _source(tmp_path, reader=reader, batch=5)
  ids = sum((_ids(next(src)) for _ in range(8)), [])  # 35 valid records per epoch
  assert sorted(ids[:35]) == valid
  if reader == "tf":  # 38 records per epoch, 3 corrupt; the 8th batch ends 5 into epoch 2
    assert src.get_state()["corrupt"] == [3]
    assert src.get_state()["positions"] == [43]
    assert "train-00000-00000.tfrecord (3 corrupt record(s))" in caplog.text
  else:
    assert src.skipped == {"wrong_size": 2, "bad_value": 1}
    assert "train-00000-00000.tfrecord (wrong_size 2, bad_value 1)" in caplog.text
  assert "train-00000-00001" not in caplog.text  # only the damaged file is named
  resumed = _source(tmp_path, reader=reader, batch=5)  # resume past the gaps stays exact
  probe = _source(tmp_path, reader=reader, batch=5)
  for _ in range(3):
    next(probe)
  resumed.set_state(probe.get_state())
  np.testing.assert_array_equal(next(resumed)["tokens"], next(probe)["tokens"])


@pytest.mark.parametrize("reader", ["grain", "tf", "numpy"])
def test_a_shard_damaged_on_disk_is_named(tmp_path, reader, caplog):
  write_dataset(str(tmp_path))
  # The last of five files (an error that listed the first four would miss it); one bit of
  # its first record's data flipped, so that record's CRC fails.
  bad = os.path.join(str(tmp_path), "shards", shards.shard_name("train", 0, 4) + ".tfrecord")
  with open(bad, "r+b") as f:
    f.seek(20)
    byte = f.read(1)
    f.seek(20)
    f.write(bytes([byte[0] ^ 1]))
  if reader == "tf":
    src = _source(tmp_path, reader=reader, batch=2)
    with pytest.raises(RuntimeError) as e:
      for _ in range(18):  # one epoch and a batch
        next(src)
    assert str(e.value).startswith(
        f"unreadable record in {bad} (DataLossError: corrupted record at 12); rerun the "
        "precompute"), str(e.value)
  elif reader == "grain":  # skipped and counted like any corrupt record
    src = _source(tmp_path, reader=reader, batch=2)
    ids = sum((_ids(next(src)) for _ in range(17)), [])  # 33 valid records per epoch
    assert len(set(ids[:33])) == 33 and src.get_state()["corrupt"] == [1]
    assert f"damaged shards: {bad} (bad_crc 1)" in caplog.text
  else:
    assert _source(tmp_path, reader=reader, batch=2).skipped == {"bad_crc": 1}
    assert f"in 1 of 5 files: {bad} (bad_crc 1)" in caplog.text


def test_shapes_are_checked_against_the_manifest(data):
  root, _ = data
  with pytest.raises(ValueError, match="model.grid_size=4"):
    ip.make_token_source(_Stage(_config(root, grid_size=8)), "train", 0, 1)
  with pytest.raises(ValueError, match="model.text_dim=24"):
    ip.make_token_source(_Stage(_config(root, text_dim=32)), "train", 0, 1)
  with pytest.raises(ValueError, match="model.text_length >= 6"):
    ip.make_token_source(_Stage(_config(root, text_length=4)), "train", 0, 1)
  with pytest.raises(ValueError, match="codebook_size"):
    ip.make_token_source(_Stage(_config(root, codebook_size=32)), "train", 0, 1)
  with pytest.raises(ValueError, match="no split 'val'"):
    c = _config(root)
    c.data.eval_split = "val"
    ip.make_token_source(_Stage(c), "eval", 0, 1)
  with pytest.raises(FileNotFoundError, match="precompute"):
    ip.make_token_source(_Stage(_config(os.path.join(root, "nope"))), "train", 0, 1)


@pytest.mark.parametrize("axes", [dict(data=8, fsdp=1, tensor=1), dict(data=2, fsdp=2, tensor=2)])
def test_global_arrays_are_sharded_as_configured(data, axes):
  root, _ = data
  config = _config(root, batch=8)
  config.mesh.update(axes)
  mesh = make_mesh(config.mesh)
  stage = _Stage(config)
  rules = config.mesh.rules
  shardings = {k: shd.named_sharding(f.axes, mesh, rules, (8,) + f.shape)
               for k, f in stage.features().items()}
  local = next(ip.make_token_source(stage, "train", 0, 1))
  arrays = global_batch(local, shardings)
  batch_axes = tuple(a for a in ("data", "fsdp") if axes[a] > 1)
  batch_axes = batch_axes[0] if len(batch_axes) == 1 else batch_axes
  for k, arr in arrays.items():
    assert arr.sharding.spec[0] == batch_axes, k
    assert all(s is None for s in arr.sharding.spec[1:]), k
    assert arr.shape == local[k].shape
    np.testing.assert_array_equal(np.asarray(arr), local[k])
    rows = {s.device: s.data.shape[0] for s in arr.addressable_shards}
    assert set(rows.values()) == {8 // (axes["data"] * axes["fsdp"])}


def test_default_and_numpy_readers_work_without_tensorflow(data):
  """A host without TensorFlow: importing it fails, and 'auto' picks the grain reader."""
  root, _ = data
  code = f"""
import sys
sys.modules['tensorflow'] = None  # importing it now fails
import json, types
from configs import tiny
from muse_jax.data import input_pipeline as ip
from muse_jax.training.base_stage import BaseStage
for reader in ('auto', 'numpy'):
  c = tiny.get_config()
  c.model.update(dict(grid_size=4, text_length=8))
  c.data.update(dict(source='precomputed', path={str(root)!r}, reader=reader))
  c.train.batch_size = 4
  st = types.SimpleNamespace(config=c)
  st.features = lambda: BaseStage.features(st)
  src = ip.make_token_source(st, 'train', 0, 1)
  b = next(src)
  print(type(src).__name__, b['tokens'].shape, b['text'].shape, json.dumps(src.get_state()))
"""
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "GrainTokenSource (4, 16) (4, 8, 24)" in out.stdout
  assert "NumpyTokenSource (4, 16) (4, 8, 24)" in out.stdout


def test_input_position_survives_an_orbax_checkpoint(data, tmp_path):
  """The loop saves get_state() with each checkpoint (Orbax JSON) and set_state()s it."""
  import ml_collections

  from muse_jax.workdir.checkpointer import Checkpointer
  root, _ = data
  ckpt = Checkpointer(str(tmp_path), ml_collections.ConfigDict(
      dict(every_steps=1, keep=1, async_save=False)))
  src = _source(root, batch=8)
  for _ in range(5):  # 40 examples: into the second epoch
    next(src)
  ckpt.save(5, {"w": np.zeros(3, np.float32)}, src.get_state(), force=True)
  ckpt.wait()
  _, data_state = ckpt.restore(5, {"w": jax.ShapeDtypeStruct((3,), np.float32)})
  ckpt.close()
  resumed = _source(root, batch=8)
  resumed.set_state(data_state)
  assert resumed.get_state() == src.get_state()
  for _ in range(3):
    got, want = next(resumed), next(src)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
