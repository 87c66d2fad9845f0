"""Training input over precomputed shards: resumable, per-process batches for a token stage.

`make_token_source(stage, split, process_index, process_count)` reads the shards that
`python -m muse_jax.precompute` wrote to `config.data.path` (`data.eval_path` for eval, if set)
and yields process-local numpy batches of `train.batch_size / process_count` rows with the
stage's `features()`:
  tokens [T] int32      low-res tokens (base); the high-res tokens for a stage that also has
  tokens_lo [T_lo]      (sr: tokens_lo = low-res, tokens = high-res)
  text [S, D] float32   T5 embeddings padded with zeros to the model's text_length S
  text_len [] int32     valid text positions (the mask is arange(S) < text_len)
Shapes are checked against the manifest before any data is read.

Readers (`data.reader`):
  'grain' (and 'auto'): grain_reader.py. Random access through an offset index beside each
    shard (precompute writes it; shards without one get it on first use); a global seeded
    shuffle over all records of all shards, reshuffled every epoch; record-level sharding
    across processes; resume in constant time; memory independent of the dataset's size; no
    TensorFlow. The default.
  'tf': tf.data over the files (below), for TensorFlow users and for shard directories where
    no index can be written beside the shards. Needs TensorFlow, the `tf` install extra
    (imported only here; tf_import.py).
  'numpy': this process's records in memory, no TensorFlow: small datasets (the CPU demo),
    where it is the fastest.
Every reader yields batches that drop nothing but span epoch boundaries; eval reads in file
order without shuffling, cycling.

tf and numpy order. Each process reads a disjoint subset of the files (files[i::process_count]),
or every process takes every process_count-th record when there are fewer files than
processes. Train: epoch e visits the process's records in an order fixed by (config.seed, e)
(tf: the file order shuffled, files interleaved, then a shuffle buffer of
`data.shuffle_buffer`; numpy: a full permutation), and epochs follow each other forever.

Exact resume (all readers). The state is the position in the process's infinite,
deterministic stream: `positions` (records consumed per process, corrupt ones included) and
`batches` (reader_common.PositionState). grain sets the position directly; tf rebuilds the
stream at epoch position // records_per_epoch and skips the rest within that epoch (reading,
not parsing, up to one epoch of this process's records); numpy indexes its permutation.

Corrupt records. A record with a missing feature, wrong sizes (token or embedding byte
counts, text_len out of range) or token ids >= codebook_size is skipped, counted (`corrupt`
in the state, and a warning with the running count). grain and numpy also skip and count a
record whose framing CRC fails or that is not an Example; that stops the tf reader with an
error. Every reader names the damaged files: tf's errors name none, so on the first gap or
error the tf reader reads each of this process's files alone through the same parse to find
them. A rerun of precompute on its output redoes every shard that no longer matches its index
entry.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Sequence

import numpy as np

from muse_jax.data import records
from muse_jax.data.batch import BatchSource, Feature
from muse_jax.data.reader_common import (PositionState, check_features, codebook_check,
                                         name_files, process_files, record_keys, split_files)

log = logging.getLogger(__name__)

READERS = ("auto", "grain", "tf", "numpy")
_INF_EPOCHS = 1 << 40


def _valid(example, ok):
  del example
  return ok


def _example(example, ok):
  del ok
  return example


def _seed(seed: int, epoch, salt: int):
  """A shuffle seed for (seed, epoch, salt); works on ints and on tf int64 tensors."""
  return (seed * 1_000_003 + salt) * 1_000_033 + epoch


class TFRecordTokenSource(PositionState, BatchSource):
  """tf.data over the shards (see the module docstring for order, resume and corruption)."""

  reader = "tf"

  def __init__(self, files: Sequence[str], counts: Sequence[int], spec: records.RecordSpec,
               features: dict[str, Feature], *, batch: int, seed: int, shuffle: bool,
               shuffle_buffer: int, process_index: int = 0, process_count: int = 1,
               cycle_length: int = 16):
    # Imported here, not at the top: tf_import's ConfigError brings JAX, and TensorFlow is only
    # for this reader. Without the tf extra, building the reader is a one-line error.
    from muse_jax.data import tf_import  # pylint: disable=g-import-not-at-top
    self.tf = tf = tf_import.tensorflow("data.reader=tf")
    super().__init__(process_index, process_count)
    self.spec, self.features, self.keys = spec, features, record_keys(features)
    self.batch, self.seed, self.shuffle = int(batch), int(seed), bool(shuffle)
    self.shuffle_buffer = max(int(shuffle_buffer), 1)
    self.files, self.per_epoch, self.record_shard = process_files(
        files, counts, process_index, process_count)
    if self.per_epoch == 0:
      raise ValueError(f"process {process_index} has no records ({len(files)} files, "
                       f"{sum(counts)} records for {process_count} processes)")
    for f in self.files:
      if not tf.io.gfile.exists(f):
        raise FileNotFoundError(f"shard {f} is listed in the manifest but missing")
    self.cycle_length = max(1, min(int(cycle_length), len(self.files)))
    self._it = None
    self._named: str | None = None  # the damaged files, once looked for

  # -- the deterministic stream --

  def _epoch(self, epoch):
    tf = self.tf
    files = tf.data.Dataset.from_tensor_slices(self.files)
    if self.shuffle:
      files = files.shuffle(len(self.files), seed=_seed(self.seed, epoch, 1),
                            reshuffle_each_iteration=False)
    ds = files.interleave(tf.data.TFRecordDataset, cycle_length=self.cycle_length,
                          block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    if self.record_shard:
      ds = ds.shard(self.pc, self.pi)
    if self.shuffle:
      ds = ds.shuffle(self.shuffle_buffer, seed=_seed(self.seed, epoch, 2),
                      reshuffle_each_iteration=False)
    n = self.per_epoch
    return ds.enumerate().map(lambda i, r: (epoch * n + i, r))

  def _parse(self, pos, raw):
    tf, spec = self.tf, self.spec
    desc = {"tokens_lo": tf.io.FixedLenFeature([], tf.string, default_value=""),
            "text_emb": tf.io.FixedLenFeature([], tf.string, default_value=""),
            "text_len": tf.io.FixedLenFeature([], tf.int64, default_value=-1)}
    if spec.grid_hi:
      desc["tokens_hi"] = tf.io.FixedLenFeature([], tf.string, default_value="")
    ex = tf.io.parse_single_example(raw, desc)
    n = ex["text_len"]
    ok = (n >= 1) & (n <= spec.text_max_length)
    ok &= tf.strings.length(ex["text_emb"], unit="BYTE") == 2 * tf.cast(n, tf.int32) * spec.text_dim
    sizes = {"tokens_lo": spec.tokens_lo, "tokens_hi": spec.tokens_hi}
    for key in desc:
      if key in sizes:
        ok &= tf.strings.length(ex[key], unit="BYTE") == 2 * sizes[key]
    out = {}
    for name, key in self.keys.items():
      if key in sizes:
        count = sizes[key]
        toks = tf.cond(ok, lambda k=key, c=count: tf.reshape(
            tf.io.decode_raw(ex[k], tf.uint16, little_endian=True), [c]),
            lambda c=count: tf.zeros([c], tf.uint16))
        toks = tf.cast(toks, tf.int32)
        ok &= tf.reduce_max(toks) < spec.codebook_size
        out[name] = toks
      elif key == "text_len":
        out[name] = tf.cast(n, tf.int32)
    if "text" in self.keys:
      length, dim = self.features["text"].shape

      def emb():
        bits = tf.io.decode_raw(ex["text_emb"], tf.uint16, little_endian=True)
        x = tf.cast(tf.bitcast(bits, tf.bfloat16), tf.float32)
        x = tf.reshape(x, [-1, dim])
        return tf.pad(x, [[0, length - tf.shape(x)[0]], [0, 0]])

      text = tf.cond(ok, emb, lambda: tf.zeros([length, dim], tf.float32))
      out["text"] = tf.ensure_shape(text, [length, dim])
    out["_pos"] = pos
    return out, ok

  def _dataset(self, position: int):
    tf = self.tf
    start, offset = divmod(int(position), self.per_epoch)

    def epoch(e):
      return self._epoch(e).skip(tf.where(e == start, tf.constant(offset, tf.int64),
                                          tf.constant(0, tf.int64)))

    ds = tf.data.Dataset.range(start, _INF_EPOCHS).flat_map(epoch)
    ds = ds.map(self._parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.filter(_valid).map(_example)
    ds = ds.batch(self.batch, drop_remainder=True)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

  def __next__(self):
    if self._it is None:
      self._it = self._dataset(self.position).as_numpy_iterator()
    try:
      batch = next(self._it)
    except self.tf.errors.OpError as e:
      bad = {f: why.removeprefix("unreadable: ") for f, why in self._damaged().items()
             if why.startswith("unreadable: ")}
      where = (name_files(bad) if bad else f"one of {len(self.files)} files ("
               f"{name_files({f: '' for f in self.files})}): {_tf_reason(e)}")
      raise RuntimeError(f"unreadable record in {where}; rerun the precompute that wrote it "
                         "(same config and --workdir) to redo that shard") from None
    pos = batch.pop("_pos")
    last = int(pos[-1]) + 1
    gaps = last - self.position - len(pos)
    if gaps:
      self.corrupt += gaps
      if self._named is None:  # once per source: it reads every file of this process
        self._named = name_files(self._damaged())
      log.warning("skipped %d corrupt record(s) (wrong sizes or values); %d so far on this "
                  "process; damaged files: %s", gaps, self.corrupt, self._named or "not found")
    self.position = last
    self.batches += 1
    return batch

  def set_state(self, state: dict) -> None:
    self._restore(state)
    self._it = None

  def _damaged(self) -> dict[str, str]:
    """{file: what is wrong} for this process's files that hold a corrupt or unreadable record,
    each read alone through the stream's own parse (tf's errors name no file)."""
    tf = self.tf

    @tf.function
    def count_bad(path):
      ok = tf.data.TFRecordDataset(path).map(lambda r: self._parse(tf.constant(0, tf.int64), r)[1])
      return ok.reduce(tf.constant(0, tf.int64),
                       lambda n, good: n + tf.cast(tf.logical_not(good), tf.int64))

    out = {}
    for f in self.files:
      try:
        n = int(count_bad(tf.constant(f)))
      except tf.errors.OpError as e:
        out[f] = f"unreadable: {_tf_reason(e)}"
        continue
      if n:
        out[f] = f"{n} corrupt record(s)"
    return out


def _tf_reason(e) -> str:
  """TensorFlow's error message without its graph, node and op decorations."""
  lines = [x.strip() for x in (getattr(e, "message", "") or str(e)).splitlines() if x.strip()]
  ends = [i for i, x in enumerate(lines) if x.startswith("[[")]  # a graph error: after the reason
  text = lines[ends[0] - 1] if ends and ends[0] else (lines[0] if lines else "")
  return f"{type(e).__name__}: {re.sub(r'^\{\{.*?\}\}\s*|\s*\[Op:.*$', '', text)}"


class NumpyTokenSource(PositionState, BatchSource):
  """This process's records in memory, no TensorFlow: for small datasets and TF-less hosts."""

  reader = "numpy"

  def __init__(self, files: Sequence[str], counts: Sequence[int], spec: records.RecordSpec,
               features: dict[str, Feature], *, batch: int, seed: int, shuffle: bool,
               process_index: int = 0, process_count: int = 1):
    super().__init__(process_index, process_count)
    self.spec, self.features, self.keys = spec, features, record_keys(features)
    self.batch, self.seed, self.shuffle = int(batch), int(seed), bool(shuffle)
    own, _, record_shard = process_files(files, counts, process_index, process_count)
    self.skipped: dict[str, int] = {}
    damaged: dict[str, dict[str, int]] = {}
    rows = []
    index = 0
    for path in own:
      for item in records.read_tfrecord(path):
        mine = not record_shard or index % process_count == process_index
        index += 1
        if not mine:
          continue
        try:
          if isinstance(item, records.CorruptRecord):
            raise item
          rows.append(records.decode_example(item, spec))
        except records.CorruptRecord as e:
          self.skipped[e.reason] = self.skipped.get(e.reason, 0) + 1
          counts = damaged.setdefault(path, {})
          counts[e.reason] = counts.get(e.reason, 0) + 1
    if self.skipped:
      log.warning("skipped %d corrupt record(s) in %d of %d files: %s",
                  sum(self.skipped.values()), len(damaged), len(own), name_files(
                      {f: ", ".join(f"{k} {v}" for k, v in c.items()) for f, c in damaged.items()}))
    if not rows:
      raise ValueError(f"process {process_index} has no valid records in {len(own)} files")
    self.data = self._stack(rows)
    self.size = len(rows)
    self._perm_epoch, self._perm = -1, None

  def _stack(self, rows: list[dict]) -> dict[str, np.ndarray]:
    out = {}
    for name, key in self.keys.items():
      if key == "text_emb":
        length, dim = self.features[name].shape
        text = np.zeros((len(rows), length, dim), np.float32)
        for i, r in enumerate(rows):
          text[i, :r["text_len"]] = r["text_emb"].astype(np.float32)
        out[name] = text
      elif key == "text_len":
        out[name] = np.asarray([r["text_len"] for r in rows], np.int32)
      else:
        out[name] = np.stack([r[key] for r in rows]).astype(np.int32)
    return out

  def _order(self, epoch: int) -> np.ndarray:
    if epoch != self._perm_epoch:
      self._perm_epoch = epoch
      self._perm = (np.random.default_rng([self.seed, epoch]).permutation(self.size)
                    if self.shuffle else np.arange(self.size))
    return self._perm

  def __next__(self):
    idx = np.empty(self.batch, np.int64)
    for j in range(self.batch):
      epoch, i = divmod(self.position + j, self.size)
      idx[j] = self._order(epoch)[i]
    self.position += self.batch
    self.batches += 1
    return {k: v[idx] for k, v in self.data.items()}

  def set_state(self, state: dict) -> None:
    self._restore(state)


def make_token_source(stage, split: str, process_index: int, process_count: int) -> BatchSource:
  """The stage's `split` ('train' or 'eval') input from `config.data` (source=precomputed)."""
  cfg = stage.config
  data = cfg.data
  if split == "train":
    path, name, shuffle = data.path, data.get("train_split", "train"), True
  else:
    path, name, shuffle = data.eval_path or data.path, data.get("eval_split", "heldout"), False
  if not path:
    raise ValueError("data.path is empty: set it to the precompute output directory "
                     "(python -m muse_jax.precompute --workdir=DIR)")
  files, counts, spec = split_files(path, name)
  features = stage.features()
  where = f"{path} ({name})"
  check_features(features, spec, where)
  codebook_check(spec, int(cfg.model.codebook_size), where)
  global_batch = int(cfg.train.batch_size)
  if global_batch % process_count:
    raise ValueError(f"train.batch_size={global_batch} is not divisible by {process_count} "
                     "processes")
  reader = data.get("reader", "auto")
  if reader not in READERS:
    raise ValueError(f"data.reader={reader!r}; choose one of {READERS}")
  kwargs: dict[str, Any] = dict(batch=global_batch // process_count, seed=int(cfg.seed),
                                shuffle=shuffle, process_index=process_index,
                                process_count=process_count)
  if reader in ("auto", "grain"):
    # Imported here: grain takes about a second to import, which runs on synthetic data and
    # --help need not pay.
    from muse_jax.data import grain_reader  # pylint: disable=g-import-not-at-top
    return grain_reader.GrainTokenSource(
        files, counts, spec, features, threads=int(data.get("grain_threads", 1)),
        prefetch=int(data.get("grain_prefetch", 256)), **kwargs)
  if reader == "numpy":
    return NumpyTokenSource(files, counts, spec, features, **kwargs)
  return TFRecordTokenSource(files, counts, spec, features,
                             shuffle_buffer=int(data.shuffle_buffer), **kwargs)
