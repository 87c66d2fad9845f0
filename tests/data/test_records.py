"""The precomputed record format: CRC32C, Example encoding, TFRecord framing, rejection."""
import os

import numpy as np
import pytest

from muse_jax.data import records as R

SPEC = R.RecordSpec(grid_lo=4, grid_hi=0, codebook_size=64, text_dim=8, text_max_length=6)
SPEC_HI = R.RecordSpec(grid_lo=2, grid_hi=4, codebook_size=300, text_dim=4, text_max_length=5)


def _crc_reference(data: bytes) -> int:
  """Bit-by-bit CRC32C (Castagnoli, reflected), independent of the table code."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _example(i, spec=SPEC, n=None, rng=None):
  rng = rng or np.random.default_rng(i)
  n = n or int(rng.integers(1, spec.text_max_length + 1))
  ex = {"id": f"ex-{i}", "caption": f"caption {i} ü", "text_len": n,
        "tokens_lo": rng.integers(0, spec.codebook_size, spec.tokens_lo),
        "text_emb": rng.standard_normal((n, spec.text_dim)).astype(np.float32)}
  if spec.grid_hi:
    ex["tokens_hi"] = rng.integers(0, spec.codebook_size, spec.tokens_hi)
  return ex


def test_crc32c_matches_reference_on_all_lengths():
  assert R.crc32c(b"123456789") == 0xE3069283  # the standard check value
  rng = np.random.default_rng(0)
  bufs = [rng.integers(0, 256, n, dtype=np.uint8).tobytes()
          for n in [0, 1, 2, 3, 4, 5, 15, 16, 17, 255, 256, 257, 1000, 4097]]
  want = [_crc_reference(b) for b in bufs]
  got = R.crc32c_many(bufs, native=False)  # numpy: vectorised over buffers of any length
  assert [int(g) for g in got] == want
  assert R._NATIVE_CRC32C is not None  # google-crc32c's C extension (requirements.txt)
  assert [int(g) for g in R.crc32c_many(bufs)] == want
  assert R.crc32c(bufs[-1]) == _crc_reference(bufs[-1])


def test_roundtrip_and_validity():
  for spec in (SPEC, SPEC_HI):
    for i in range(4):
      ex = _example(i, spec)
      out = R.decode_example(R.encode_example(ex, spec), spec)
      assert out["id"] == ex["id"] and out["caption"] == ex["caption"]
      assert out["text_len"] == ex["text_len"]
      np.testing.assert_array_equal(out["tokens_lo"], ex["tokens_lo"])
      if spec.grid_hi:
        np.testing.assert_array_equal(out["tokens_hi"], ex["tokens_hi"])
      assert out["text_emb"].dtype == R.EMB_DTYPE
      np.testing.assert_array_equal(out["text_emb"].astype(np.float32),
                                    ex["text_emb"].astype(R.EMB_DTYPE).astype(np.float32))
  assert R.encode_example(_example(3), SPEC) == R.encode_example(_example(3), SPEC)


def test_tensorflow_reads_and_writes_the_same_bytes(tmp_path):
  tf = pytest.importorskip("tensorflow")
  recs = [R.encode_example(_example(i, SPEC_HI), SPEC_HI) for i in range(5)]
  ours, theirs = str(tmp_path / "a.tfrecord"), str(tmp_path / "b.tfrecord")
  R.write_tfrecord(ours, recs)
  with tf.io.TFRecordWriter(theirs) as w:
    for r in recs:
      w.write(r)
  assert open(ours, "rb").read() == open(theirs, "rb").read()
  read = [r.numpy() for r in tf.data.TFRecordDataset(ours)]
  assert read == recs
  for raw in read:  # a valid Example, serialized exactly as TF would
    ex = tf.train.Example.FromString(raw)
    assert ex.SerializeToString(deterministic=True) == raw
    assert sorted(ex.features.feature) == ["caption", "id", "text_emb", "text_len", "tokens_hi",
                                           "tokens_lo"]
  assert list(R.read_tfrecord(ours)) == recs


def _corrupt(features: dict) -> bytes:
  return R.encode_features(features)


def _good_features(spec=SPEC, n=3):
  ex = _example(0, spec, n=n)
  return {"id": b"x", "caption": b"c", "text_len": [n],
          "tokens_lo": np.asarray(ex["tokens_lo"], "<u2").tobytes(),
          "text_emb": ex["text_emb"].astype(R.EMB_DTYPE).tobytes()}


@pytest.mark.parametrize("change,reason", [
    ({"tokens_lo": b"\x00" * 30}, "wrong_size"),               # 15 tokens, not 16
    ({"text_len": [7]}, "wrong_size"),                         # > text_max_length
    ({"text_len": [0]}, "wrong_size"),
    ({"text_len": [2]}, "wrong_size"),                         # 3 rows of embeddings stored
    ({"text_emb": b"\x00" * 10}, "wrong_size"),
    ({"text_len": [1, 2]}, "wrong_size"),
    ({"tokens_lo": np.full(16, 64, "<u2").tobytes()}, "bad_value"),  # id == codebook_size
    ({"tokens_lo": None}, "missing_feature"),
    ({"id": None}, "missing_feature"),
])
def test_decode_rejects_bad_records(change, reason):
  feats = _good_features()
  R.decode_example(_corrupt(feats), SPEC)  # the unchanged record is fine
  for k, v in change.items():
    if v is None:
      del feats[k]
    else:
      feats[k] = v
  with pytest.raises(R.CorruptRecord) as e:
    R.decode_example(_corrupt(feats), SPEC)
  assert e.value.reason == reason


def test_decode_rejects_garbage_and_missing_hi_tokens():
  with pytest.raises(R.CorruptRecord) as e:
    R.decode_example(b"\xff\xff\xff\xff\x0f garbage", SPEC)
  assert e.value.reason == "not_an_example"
  lo_only = R.encode_example(_example(1, SPEC), SPEC)
  spec_hi = R.RecordSpec(4, 4, 64, 8, 6)
  with pytest.raises(R.CorruptRecord, match="tokens_hi"):
    R.decode_example(lo_only, spec_hi)


def test_read_tfrecord_reports_bad_crc_and_truncation(tmp_path):
  recs = [R.encode_example(_example(i), SPEC) for i in range(3)]
  path = str(tmp_path / "x.tfrecord")
  R.write_tfrecord(path, recs)
  blob = bytearray(open(path, "rb").read())
  first = 16 + len(recs[0])
  blob[first + 12 + 5] ^= 0x01  # flip a data bit of record 1
  with open(path, "wb") as f:
    f.write(bytes(blob[:-3]))   # and cut the last record short
  out = list(R.read_tfrecord(path))
  assert out[0] == recs[0]
  assert isinstance(out[1], R.CorruptRecord) and out[1].reason == "bad_crc"
  assert isinstance(out[2], R.CorruptRecord) and out[2].reason == "truncated"
  assert len(out) == 3
  assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_spec_rejects_codebooks_that_do_not_fit_uint16():
  with pytest.raises(ValueError, match="uint16"):
    R.RecordSpec(4, 0, 70_000, 8, 6)
  with pytest.raises(ValueError, match="token ids"):
    R.encode_example({**_example(0), "tokens_lo": np.full(16, 64)}, SPEC)
