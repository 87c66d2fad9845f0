"""The precomputed record format, and TFRecord files read and written without TensorFlow.

One `tf.train.Example` per image, with these features (sizes are fixed per dataset and stored
in the manifest as a `RecordSpec`):

  id         bytes_list[1]  UTF-8 example id from the source (unique within a dataset)
  caption    bytes_list[1]  UTF-8 caption after normalisation
  tokens_lo  bytes_list[1]  low-res VQ token ids, row-major [grid_lo * grid_lo], uint16 LE
  tokens_hi  bytes_list[1]  high-res VQ token ids [grid_hi * grid_hi], uint16 LE; present only
                            when a super-resolution tokenizer was configured
  text_emb   bytes_list[1]  T5 embeddings of the valid tokens only (EOS included), [text_len,
                            text_dim], bfloat16 LE, row-major; padded rows are not stored
  text_len   int64_list[1]  number of valid T5 tokens, 1 <= text_len <= text_max_length

Token ids must be < codebook_size <= 65536 (uint16). Readers rebuild the padded text as
zeros past `text_len` (the T5 padding convention of `muse_jax.encoders.text_encoder`).

A reader rejects a record whose framing CRC fails, that is not an Example, that misses a
feature, or whose sizes or values disagree with the spec: `decode_example` raises
`CorruptRecord(reason)` and callers skip it and count it under that reason.

Encoding is deterministic (features sorted by name, packed int64), so the same inputs give the
same bytes; TensorFlow's parsers read these records and TensorFlow-written Examples of this
layout read here. TFRecord framing: uint64 length LE, masked CRC32C of the length, data, masked
CRC32C of the data. CRC32C comes from google-crc32c's C extension where it is installed
(requirements.txt), else from a lane-parallel numpy version (tens of MB/s), so the module runs
with numpy and ml_dtypes alone.
"""
from __future__ import annotations

import dataclasses
import functools
import struct
from typing import Iterable, Iterator

import ml_dtypes
import numpy as np
from etils import epath

from muse_jax import paths

FEATURES = ("caption", "id", "text_emb", "text_len", "tokens_hi", "tokens_lo")
TOKEN_DTYPE = np.dtype("<u2")
EMB_DTYPE = np.dtype(ml_dtypes.bfloat16)
MAX_CODEBOOK = 1 << 16


class CorruptRecord(ValueError):
  """A record that fails a check; `reason` names the check (used as a skip-count key)."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class RecordSpec:
  """Sizes every record of a dataset has. `grid_hi` = 0: no high-res tokens."""
  grid_lo: int
  grid_hi: int
  codebook_size: int
  text_dim: int
  text_max_length: int

  def __post_init__(self):
    if not 0 < self.codebook_size <= MAX_CODEBOOK:
      raise ValueError(f"codebook_size={self.codebook_size}: tokens are stored as uint16, so "
                       f"it must be in [1, {MAX_CODEBOOK}]")
    if self.grid_lo < 1 or self.grid_hi < 0 or self.text_dim < 1 or self.text_max_length < 1:
      raise ValueError(f"invalid record spec {self}")

  @property
  def tokens_lo(self) -> int:
    return self.grid_lo ** 2

  @property
  def tokens_hi(self) -> int:
    return self.grid_hi ** 2

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> "RecordSpec":
    return cls(**{f.name: int(d[f.name]) for f in dataclasses.fields(cls)})


# --- CRC32C (Castagnoli), numpy lane-parallel ------------------------------------------------

_POLY = 0x82F63B78


def _make_table() -> np.ndarray:
  table = np.zeros(256, np.uint32)
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ _POLY if c & 1 else c >> 1
    table[i] = c
  return table


_TABLE = _make_table()
_TABLE_LIST = [int(x) for x in _TABLE]


def _step_zero(r: int) -> int:
  return _TABLE_LIST[r & 0xFF] ^ (r >> 8)


@functools.lru_cache(maxsize=64)
def _zeros_tables(n: int) -> np.ndarray:
  """[4, 256] byte tables of the linear map 'run the CRC register over n zero bytes'."""
  # The map as the images of the 32 basis bits; square-and-multiply on n.
  def compose(a, b):  # a after b
    return [_apply(a, v) for v in b]

  def _apply(m, v):
    out = 0
    i = 0
    while v:
      if v & 1:
        out ^= m[i]
      v >>= 1
      i += 1
    return out

  result = [1 << i for i in range(32)]
  power = [_step_zero(1 << i) for i in range(32)]
  while n:
    if n & 1:
      result = compose(power, result)
    power = compose(power, power)
    n >>= 1
  tables = np.zeros((4, 256), np.uint32)
  for k in range(4):
    for b in range(256):
      tables[k, b] = _apply(result, b << (8 * k))
  return tables


def _chunk_size(max_len: int) -> int:
  m = 16
  while m * m < max_len:
    m *= 2
  return m


def _native_crc32c():
  """google_crc32c's C (SSE4.2) implementation, or None where it is not installed."""
  try:
    import google_crc32c
  except ImportError:
    return None
  return google_crc32c.value if google_crc32c.implementation == "c" else None


_NATIVE_CRC32C = _native_crc32c()


def crc32c_many(buffers: Iterable[bytes], native: bool = True) -> np.ndarray:
  """CRC32C of each buffer, [n] uint32.

  With `native` and google-crc32c's C extension installed (requirements.txt), each buffer
  goes through it; otherwise the numpy version below runs, far slower: at the paper's sizes it
  makes record framing a large share of precompute (python benchmarks/precompute.py --full
  without google-crc32c installed; docs/experiments.md).
  """
  if native and _NATIVE_CRC32C is not None:
    return np.array([_NATIVE_CRC32C(b) for b in buffers], np.uint32)
  return _crc32c_numpy(buffers)


def _crc32c_numpy(buffers: Iterable[bytes]) -> np.ndarray:
  """CRC32C of each buffer, vectorised over buffers and over chunks of each (numpy only).

  Uses linearity: the register after `~0, data` equals the one after `0, data'` where data'
  has its first 4 bytes inverted, and leading zero bytes do not move a zero register. So each
  buffer is left-padded with zeros into chunks of m bytes, every chunk is run from 0 in
  parallel (m vector steps), and the chunk results are folded left to right with the
  'advance over m zero bytes' map (one vector step per chunk).
  """
  bufs = [bytes(b) for b in buffers]
  out = np.zeros(len(bufs), np.uint32)
  if not bufs:
    return out
  short = [i for i, b in enumerate(bufs) if len(b) < 4]
  for i in short:  # the prefix trick needs 4 bytes
    r = 0xFFFFFFFF
    for byte in bufs[i]:
      r = _TABLE_LIST[(r ^ byte) & 0xFF] ^ (r >> 8)
    out[i] = r ^ 0xFFFFFFFF
  idx = [i for i, b in enumerate(bufs) if len(b) >= 4]
  if not idx:
    return out
  m = _chunk_size(max(len(bufs[i]) for i in idx))
  nchunks = max(-(-len(bufs[i]) // m) for i in idx)
  data = np.zeros((len(idx), nchunks * m), np.uint8)
  for row, i in enumerate(idx):
    b = np.frombuffer(bufs[i], np.uint8)
    data[row, data.shape[1] - len(b):] = b
    data[row, data.shape[1] - len(b):data.shape[1] - len(b) + 4] ^= 0xFF
  chunks = data.reshape(len(idx), nchunks, m)
  reg = np.zeros((len(idx), nchunks), np.uint32)
  for j in range(m):
    reg = _TABLE[(reg ^ chunks[:, :, j]) & 0xFF] ^ (reg >> 8)
  zt = _zeros_tables(m)
  acc = np.zeros(len(idx), np.uint32)
  for c in range(nchunks):
    acc = (zt[0][acc & 0xFF] ^ zt[1][(acc >> 8) & 0xFF] ^ zt[2][(acc >> 16) & 0xFF]
           ^ zt[3][acc >> 24]) ^ reg[:, c]
  out[idx] = acc ^ np.uint32(0xFFFFFFFF)
  return out


def crc32c(data: bytes) -> int:
  return int(crc32c_many([data])[0])


def masked_crc(crcs: np.ndarray) -> np.ndarray:
  """TFRecord's masked CRC: rotate right by 15 and add a constant (mod 2^32)."""
  crcs = np.asarray(crcs, np.uint32).astype(np.uint64)
  rot = ((crcs >> 15) | (crcs << 17)) & 0xFFFFFFFF
  return ((rot + 0xA282EAD8) & 0xFFFFFFFF).astype(np.uint32)


# --- TFRecord framing ------------------------------------------------------------------------


def frame_records(records: list[bytes]) -> bytes:
  """TFRecord file bytes for `records` (what tf.io.TFRecordWriter writes, uncompressed)."""
  lengths = [struct.pack("<Q", len(r)) for r in records]
  crcs = masked_crc(crc32c_many(lengths + list(records)))
  n = len(records)
  parts = []
  for i, r in enumerate(records):
    parts += [lengths[i], struct.pack("<I", int(crcs[i])), r, struct.pack("<I", int(crcs[n + i]))]
  return b"".join(parts)


def frame_sizes(records: list[bytes]) -> list[int]:
  """Bytes each record takes in a TFRecord file: its data and 16 bytes of framing."""
  return [16 + len(r) for r in records]


def unframe(frame: bytes, where: str = "") -> bytes:
  """The data of one framed record (length, its CRC, data, data CRC), checked; raises
  CorruptRecord('truncated' or 'bad_crc')."""
  if len(frame) < 16:
    raise CorruptRecord("truncated", f"{where}: {len(frame)} bytes of framing")
  (length,) = struct.unpack_from("<Q", frame, 0)
  if 16 + length != len(frame):
    raise CorruptRecord("truncated", f"{where}: length {length} in a {len(frame)}-byte frame")
  len_crc, = struct.unpack_from("<I", frame, 8)
  data_crc, = struct.unpack_from("<I", frame, 12 + length)
  data = frame[12:12 + length]
  crcs = masked_crc(crc32c_many([frame[:8], data]))
  if int(crcs[0]) != len_crc or int(crcs[1]) != data_crc:
    raise CorruptRecord("bad_crc", where)
  return data


def write_tfrecord(path: str, records: list[bytes]) -> None:
  """Writes atomically (paths.write_atomic: a renamed local temporary file, or one upload)."""
  paths.write_atomic(path, frame_records(records))


def read_tfrecord(path: str, verify: bool = True) -> Iterator[bytes | CorruptRecord]:
  """Yields each record's bytes, or a `CorruptRecord` for one whose CRC fails.

  A truncated or unframeable tail yields one CorruptRecord('truncated') and ends the file.
  """
  blob = epath.Path(path).read_bytes()
  pos, records, headers = 0, [], []
  tail_bad = False
  while pos < len(blob):
    if pos + 12 > len(blob):
      tail_bad = True
      break
    header = blob[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (len_crc,) = struct.unpack("<I", blob[pos + 8:pos + 12])
    if pos + 16 + length > len(blob):
      tail_bad = True
      break
    data = blob[pos + 12:pos + 12 + length]
    (data_crc,) = struct.unpack("<I", blob[pos + 12 + length:pos + 16 + length])
    records.append(data)
    headers.append((header, len_crc, data_crc))
    pos += 16 + length
  if verify and records:
    crcs = masked_crc(crc32c_many([h[0] for h in headers] + records))
    n = len(records)
    for i, r in enumerate(records):
      if headers[i][1] != int(crcs[i]) or headers[i][2] != int(crcs[n + i]):
        yield CorruptRecord("bad_crc", f"{path} record {i}")
      else:
        yield r
  else:
    yield from records
  if tail_bad:
    yield CorruptRecord("truncated", f"{path} ends inside a record")


# --- tf.train.Example wire format ------------------------------------------------------------


def _varint(v: int) -> bytes:
  if v < 0:
    v += 1 << 64
  out = bytearray()
  while True:
    b = v & 0x7F
    v >>= 7
    if v:
      out.append(b | 0x80)
    else:
      out.append(b)
      return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
  return _varint((field << 3) | 2) + _varint(len(payload)) + payload


def _bytes_feature(value: bytes) -> bytes:
  return _len_field(1, _len_field(1, value))  # Feature.bytes_list{value: [value]}


def _int64_feature(values) -> bytes:
  packed = b"".join(_varint(int(v)) for v in values)
  return _len_field(3, _len_field(1, packed))  # Feature.int64_list{value: packed}


def encode_features(features: dict[str, bytes | list[int]]) -> bytes:
  """A serialized tf.train.Example; bytes values -> bytes_list, int lists -> int64_list."""
  entries = []
  for key in sorted(features):
    value = features[key]
    feat = _bytes_feature(value) if isinstance(value, bytes) else _int64_feature(value)
    entries.append(_len_field(1, _len_field(1, key.encode()) + _len_field(2, feat)))
  return _len_field(1, b"".join(entries))


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
  result = shift = 0
  while True:
    if pos >= len(buf) or shift > 63:
      raise CorruptRecord("not_an_example", "bad varint")
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if not b & 0x80:
      return result, pos
    shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, bytes | int]]:
  """(field number, wire type, value) of a protobuf message; unknown wire types raise."""
  pos = 0
  while pos < len(buf):
    tag, pos = _read_varint(buf, pos)
    field, wire = tag >> 3, tag & 7
    if wire == 0:
      value, pos = _read_varint(buf, pos)
    elif wire == 2:
      n, pos = _read_varint(buf, pos)
      if pos + n > len(buf):
        raise CorruptRecord("not_an_example", "length past the end")
      value, pos = buf[pos:pos + n], pos + n
    elif wire == 1:
      value, pos = buf[pos:pos + 8], pos + 8
    elif wire == 5:
      value, pos = buf[pos:pos + 4], pos + 4
    else:
      raise CorruptRecord("not_an_example", f"wire type {wire}")
    if pos > len(buf):
      raise CorruptRecord("not_an_example", "field past the end")
    yield field, wire, value


def decode_features(raw: bytes) -> dict[str, list]:
  """{name: list of bytes (bytes_list) or ints (int64_list)} of a serialized Example.

  Nested messages are walked as memoryview slices, so each value is copied once, at the end."""
  out: dict[str, list] = {}
  for f, w, features in _fields(memoryview(raw)):
    if f != 1 or w != 2:
      continue
    for f2, w2, entry in _fields(features):
      if f2 != 1 or w2 != 2:
        continue
      key, feature = None, b""
      for f3, w3, v in _fields(entry):
        if f3 == 1 and w3 == 2:
          key = bytes(v).decode("utf-8", errors="replace")
        elif f3 == 2 and w3 == 2:
          feature = v
      if key is None:
        raise CorruptRecord("not_an_example", "feature without a name")
      values: list = []
      for kind, w4, lst in _fields(feature):
        if w4 != 2:
          continue
        for f5, w5, v in _fields(lst):
          if f5 != 1:
            continue
          if kind == 1 and w5 == 2:
            values.append(bytes(v))
          elif kind == 3 and w5 == 2:  # packed int64
            p = 0
            while p < len(v):
              x, p = _read_varint(v, p)
              values.append(x - (1 << 64) if x >= 1 << 63 else x)
          elif kind == 3 and w5 == 0:
            values.append(v - (1 << 64) if v >= 1 << 63 else v)
      out[key] = values
  return out


# --- Precomputed examples --------------------------------------------------------------------


def encode_example(example: dict, spec: RecordSpec) -> bytes:
  """example: id, caption (str), tokens_lo [grid_lo^2] ints, tokens_hi (if spec.grid_hi),
  text_emb [text_len, text_dim] (cast to bfloat16), text_len (int)."""
  n = int(example["text_len"])
  emb = np.asarray(example["text_emb"])
  if emb.shape != (n, spec.text_dim) or not 1 <= n <= spec.text_max_length:
    raise ValueError(f"text_emb {emb.shape} does not match text_len={n}, text_dim="
                     f"{spec.text_dim}, text_max_length={spec.text_max_length}")
  feats: dict = {
      "id": str(example["id"]).encode("utf-8"),
      "caption": str(example["caption"]).encode("utf-8"),
      "text_emb": np.ascontiguousarray(emb.astype(EMB_DTYPE)).tobytes(),
      "text_len": [n],
      "tokens_lo": _token_bytes(example["tokens_lo"], spec.tokens_lo, spec.codebook_size),
  }
  if spec.grid_hi:
    feats["tokens_hi"] = _token_bytes(example["tokens_hi"], spec.tokens_hi, spec.codebook_size)
  return encode_features(feats)


def _token_bytes(tokens, count: int, codebook_size: int) -> bytes:
  t = np.asarray(tokens).reshape(-1)
  if t.size != count:
    raise ValueError(f"expected {count} tokens, got {t.size}")
  if t.size and (t.min() < 0 or t.max() >= codebook_size):
    raise ValueError(f"token ids outside [0, {codebook_size})")
  return t.astype(TOKEN_DTYPE).tobytes()


def _one(feats: dict, key: str):
  values = feats.get(key)
  if values is None:
    raise CorruptRecord("missing_feature", key)
  if len(values) != 1:
    raise CorruptRecord("wrong_size", f"{key} has {len(values)} values")
  return values[0]


def _tokens(feats, key: str, count: int, codebook_size: int) -> np.ndarray:
  data = _one(feats, key)
  if not isinstance(data, bytes) or len(data) != 2 * count:
    raise CorruptRecord("wrong_size", f"{key}: {len(data) if isinstance(data, bytes) else data} "
                        f"bytes, expected {2 * count}")
  t = np.frombuffer(data, TOKEN_DTYPE).astype(np.int32)
  if t.size and t.max() >= codebook_size:
    raise CorruptRecord("bad_value", f"{key} id {t.max()} >= codebook_size {codebook_size}")
  return t


def decode_example(raw: bytes, spec: RecordSpec) -> dict:
  """Parsed and checked record: id, caption (str), tokens_lo/tokens_hi int32, text_emb
  [text_len, text_dim] bfloat16, text_len int. Raises CorruptRecord."""
  feats = decode_features(raw)
  ident, caption = _one(feats, "id"), _one(feats, "caption")
  if not isinstance(ident, bytes) or not isinstance(caption, bytes):
    raise CorruptRecord("wrong_type", "id/caption must be bytes")
  n = _one(feats, "text_len")
  if not isinstance(n, int) or not 1 <= n <= spec.text_max_length:
    raise CorruptRecord("wrong_size", f"text_len={n} outside [1, {spec.text_max_length}]")
  emb = _one(feats, "text_emb")
  if not isinstance(emb, bytes) or len(emb) != 2 * n * spec.text_dim:
    raise CorruptRecord("wrong_size", f"text_emb has {len(emb)} bytes, expected "
                        f"{2 * n * spec.text_dim} for text_len={n}")
  out = {
      "id": ident.decode("utf-8", errors="replace"),
      "caption": caption.decode("utf-8", errors="replace"),
      "tokens_lo": _tokens(feats, "tokens_lo", spec.tokens_lo, spec.codebook_size),
      "text_emb": np.frombuffer(emb, EMB_DTYPE).reshape(n, spec.text_dim),
      "text_len": n,
  }
  if spec.grid_hi:
    out["tokens_hi"] = _tokens(feats, "tokens_hi", spec.tokens_hi, spec.codebook_size)
  return out
