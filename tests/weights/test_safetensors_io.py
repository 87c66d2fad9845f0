"""Malformed safetensors files and indexes: one WeightsError line naming the file and problem."""
import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from muse_jax.weights.safetensors_io import SafetensorsReader, WeightsError


def _good(path):
  save_file({"a": np.ones((4, 4), np.float32), "b": np.zeros(3, np.int32)}, str(path))
  blob = open(path, "rb").read()
  (n,) = struct.unpack("<Q", blob[:8])
  return blob, json.loads(blob[8:8 + n]), blob[8 + n:]


def _with_header(header, data):
  raw = json.dumps(header).encode()
  return struct.pack("<Q", len(raw)) + raw + data


def _malformed(kind, blob, header, data):
  if kind == "empty":
    return b""
  if kind == "header_too_large":
    return struct.pack("<Q", 1 << 40) + blob[8:]
  if kind == "header_past_end":
    return struct.pack("<Q", len(blob)) + blob[8:]
  if kind == "header_not_json":
    return struct.pack("<Q", 4) + b"abcd" + data
  if kind == "truncated":
    return blob[:-10]
  if kind == "unknown_dtype":
    return _with_header({**header, "a": {**header["a"], "dtype": "XX"}}, data)
  if kind == "offsets_past_end":
    return _with_header({**header, "a": {**header["a"], "data_offsets": [0, 1000]}}, data)
  raise ValueError(kind)


def _check(error, file, problem):
  msg = str(error.value)
  assert "\n" not in msg
  assert file in msg and problem in msg, msg


@pytest.mark.parametrize("kind,problem", [
    ("empty", "header too small"), ("header_too_large", "header too large"),
    ("header_past_end", "invalid header length"), ("header_not_json", "invalid JSON"),
    ("truncated", "not fully covered"), ("unknown_dtype", "unknown variant `XX`"),
    ("offsets_past_end", "invalid shape, data type, or offset")])
def test_malformed_file(tmp_path, kind, problem):
  path = tmp_path / "model.safetensors"
  path.write_bytes(_malformed(kind, *_good(tmp_path / "good.safetensors")))
  for given in (path, tmp_path / "index.json"):  # alone, and as a shard of an index
    if given.suffix == ".json":
      given.write_text(json.dumps({"weight_map": {"a": path.name, "b": path.name}}))
    with pytest.raises(WeightsError) as e:
      SafetensorsReader(str(given))
    _check(e, str(path), problem)


@pytest.mark.parametrize("index,problem", [
    ("{not json", "not a safetensors index"), ('{"metadata": {}}', "no weight_map"),
    ('{"weight_map": ["a"]}', "not a safetensors index"),
    ('{"weight_map": {"a": "model-00002.safetensors"}}',
     "names shard model-00002.safetensors, which is missing"),
    ('{"weight_map": {"a": "../good.safetensors"}}', "is not a file beside the index")])
def test_malformed_index(tmp_path, index, problem):
  _good(tmp_path / "good.safetensors")
  shards = tmp_path / "shards"
  shards.mkdir()
  (shards / "model.safetensors.index.json").write_text(index)
  for given in (shards, shards / "model.safetensors.index.json"):
    with pytest.raises(WeightsError) as e:
      SafetensorsReader(str(given))
    _check(e, str(shards / "model.safetensors.index.json"), problem)


def test_file_changed_after_opening(tmp_path):
  path = tmp_path / "model.safetensors"
  blob, _, _ = _good(path)
  reader = SafetensorsReader(str(path))
  np.testing.assert_array_equal(reader["a"], np.ones((4, 4), np.float32))
  path.write_bytes(blob[:-10])
  with pytest.raises(WeightsError) as e:
    reader["b"]
  _check(e, str(path), "cannot read tensor b")
