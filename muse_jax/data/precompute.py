"""Precompute: raw images + captions -> VQ tokens + frozen T5 embeddings, as sharded TFRecords.

`run_precompute(config, workdir)` (the library behind `python -m muse_jax.precompute`) runs the
VQ tokenizer (and the super-resolution tokenizer, when `sr_tokenizer.resolution` > 0) and the
T5 encoder, jitted with the batch sharded over the mesh, on this process's disjoint slice of
each split of the raw source (`muse_jax.data.sources`), and writes:

  WORKDIR/shards/{split}-{process:05d}-{shard:05d}.tfrecord   the records (records.py format)
  WORKDIR/index/{split}-{process:05d}-{shard:05d}.json        one per finished shard: records,
                                                               skips by reason, sha256
  WORKDIR/index/{split}-{process:05d}.json                     this process finished the split
  WORKDIR/manifest.json        (process 0, at the end) record spec, per-split files and counts
                               (written, seen, skipped by reason), models, config
  WORKDIR/spiece.model         when precompute.spiece_vocab_size > 0 and no spiece_model is
                               given: a sentencepiece model trained on the captions (demos)

Shard `k` of process `p` holds the kept examples among raw records
[k * examples_per_shard, (k+1) * examples_per_shard) of that process's slice, in source order.
Files are written to a temporary name and renamed, then the index entry is written; a rerun
after a kill skips every shard that has an index entry (without running the models on it) and
rewrites the rest. The output is a pure function of the config: models and batches are formed
per shard (a batch never spans two shards), so a resumed run writes the same bytes as an
uninterrupted one.

Multi-process: all processes call the models in lockstep (global batch = batch_size rows,
batch_size / process_count per process); a process that has run out of work feeds padding rows
until every process is done. WORKDIR must be shared by the processes (process 0 reads every
index entry to write the manifest).

Models are built from config: `tokenizer.weights` = '' initialises the VQ tokenizer randomly
from `tokenizer.seed` (tests, benchmarks, demos), otherwise it is a vqgan workdir or a
diffusers VQModel; the text encoder follows `text_encoder` (configs/common_t5.py).
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import itertools
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Iterator, Protocol, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from muse_jax.data import preprocess, records, sources
from muse_jax.data.preprocess import SkipCounter

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


# --- Model interfaces ------------------------------------------------------------------------


class ImageTokenizerLike(Protocol):
  """What precompute needs of `muse_jax.models.tokenizer.VQTokenizer`."""
  downsample_factor: int

  def encode(self, images) -> jax.Array:
    """images [B, H, W, 3] uint8 (a global array in multi-process runs) -> ids [B, h, w]."""


class TextEncoderLike(Protocol):
  """What precompute needs of `muse_jax.models.text_encoder.TextEncoder`."""
  max_length: int

  def tokenize(self, texts: Sequence[str]) -> Any:
    """-> object with ids [B, L] and mask [B, L] (host arrays)."""

  def encode_tokens(self, ids, mask) -> tuple[jax.Array, jax.Array]:
    """Process-local ids/mask -> (embeddings [B, L, D], mask [B, L]) as global arrays."""


def local_rows(x) -> np.ndarray:
  """This process's rows of a batch-sharded (global) array, in order."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  seen, parts = set(), []
  for s in sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0):
    start = s.index[0].start or 0
    if start not in seen:
      seen.add(start)
      parts.append(np.asarray(s.data))
  return np.concatenate(parts)


@dataclasses.dataclass
class Models:
  """The frozen models of one precompute run."""
  tokenizer: ImageTokenizerLike
  resolution: int
  text_encoder: TextEncoderLike
  sr_tokenizer: ImageTokenizerLike | None = None
  sr_resolution: int = 0
  codebook_size: int = 0
  text_dim: int = 0
  mesh: Any = None

  def grid(self, tok, res) -> int:
    return res // tok.downsample_factor

  def spec(self) -> records.RecordSpec:
    return records.RecordSpec(
        grid_lo=self.grid(self.tokenizer, self.resolution),
        grid_hi=self.grid(self.sr_tokenizer, self.sr_resolution) if self.sr_tokenizer else 0,
        codebook_size=self.codebook_size, text_dim=self.text_dim,
        text_max_length=int(self.text_encoder.max_length))

  def _batch_sharding(self):
    axes = tuple(a for a in ("data", "fsdp") if self.mesh.shape.get(a, 1) > 1)
    return NamedSharding(self.mesh, P(axes or None))

  def _tokens(self, tok, images: np.ndarray) -> np.ndarray:
    x = images
    if jax.process_count() > 1:  # the tokenizer takes a global batch
      x = jax.make_array_from_process_local_data(self._batch_sharding(), images)
    return local_rows(tok.encode(x)).reshape(images.shape[0], -1)

  def run(self, images_lo: np.ndarray, images_hi: np.ndarray | None,
          captions: list[str]) -> dict[str, np.ndarray]:
    """Process-local batch -> tokens_lo [B, T], tokens_hi, text_emb [B, L, D], text_len [B]."""
    out = {"tokens_lo": self._tokens(self.tokenizer, images_lo)}
    if self.sr_tokenizer is not None:
      out["tokens_hi"] = self._tokens(self.sr_tokenizer, images_hi)
    batch = self.text_encoder.tokenize(captions)
    emb, mask = self.text_encoder.encode_tokens(batch.ids, batch.mask)
    out["text_emb"] = local_rows(emb)
    out["text_len"] = local_rows(mask).sum(-1).astype(np.int32)
    return out


def _vq_tokenizer(section, mesh, name: str):
  from muse_jax.models import vqgan as V
  from muse_jax.models.functional import functionalize
  from muse_jax.models.tokenizer import VQTokenizer
  cfg = V.VQGANConfig.from_config(section.model)
  if section.weights:
    from muse_jax.training.vqgan_stage import load_finished_params
    params = load_finished_params(section.weights, cfg)
  else:
    log.warning("%s.weights is empty: using a randomly initialised tokenizer (seed %d)", name,
                section.seed)
    _, init_fn = functionalize(lambda r: V.VQGAN(cfg, rngs=r))
    with jax.default_device(jax.local_devices()[0]):  # eager: op compiles are cached
      params = jax.device_get(init_fn(jax.random.key(int(section.seed))))
  cfg.token_grid(int(section.resolution))
  # Place the (host) weights replicated on the mesh here: jax.device_put would compare every
  # array across processes first (one collective each) in multi-process runs.
  replicated = NamedSharding(mesh, P())
  params = jax.tree.map(lambda a: jax.make_array_from_callback(
      np.shape(a), replicated, lambda idx, a=np.asarray(a): a[idx]), params)
  return VQTokenizer(cfg, params, mesh), cfg


def build_models(config, mesh, spiece_model: str = "") -> Models:
  """The VQ tokenizer(s) and T5 encoder that `config` describes, on `mesh`."""
  from muse_jax.models.text_encoder import TextEncoder
  tok, tok_cfg = _vq_tokenizer(config.tokenizer, mesh, "tokenizer")
  sr_tok, sr_res = None, int(config.sr_tokenizer.resolution)
  codebook = tok_cfg.codebook_size
  if sr_res > 0:
    sr_tok, sr_cfg = _vq_tokenizer(config.sr_tokenizer, mesh, "sr_tokenizer")
    if sr_cfg.codebook_size != codebook:
      raise ValueError(f"tokenizer and sr_tokenizer codebooks differ ({codebook} vs "
                       f"{sr_cfg.codebook_size}); records hold one codebook_size")
  te_cfg = ml_collections.ConfigDict(config.text_encoder.to_dict())
  if spiece_model:
    te_cfg.spiece_model = spiece_model
  encoder = TextEncoder.from_config(te_cfg, mesh=mesh, rules=config.mesh.rules)
  if encoder.tokenizer is None:
    raise ValueError("text_encoder.spiece_model is empty: give T5's spiece.model, or set "
                     "precompute.spiece_vocab_size > 0 to train one on the captions (demos)")
  return Models(tok, int(config.tokenizer.resolution), encoder, sr_tok, sr_res, codebook,
                encoder.config.d_model, mesh)


# --- Sentencepiece for demos -----------------------------------------------------------------


def train_spiece_model(captions: Sequence[str], vocab_size: int) -> bytes:
  """A small T5-style sentencepiece model (pad 0, eos 1, unk 2, no bos) trained on captions.

  Deterministic for the same captions (one thread). For demos and tests on synthetic data;
  real runs use T5's own spiece.model.
  """
  import sentencepiece as spm
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(list(captions)), model_writer=buf, vocab_size=int(vocab_size),
      model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
      num_threads=1, character_coverage=1.0, minloglevel=2)
  return buf.getvalue()


def _split_data(config, split: str):
  data = ml_collections.ConfigDict(config.data.to_dict())
  res = [int(config.tokenizer.resolution)]
  if int(config.sr_tokenizer.resolution) > 0:
    res.append(int(config.sr_tokenizer.resolution))
  data.resolutions = tuple(sorted(set(res)))  # what the tokenizers need
  if data.source == "shapes":
    data.shapes.split = split
  elif data.source == "tfds":
    data.tfds.split = split
  return data


def ensure_spiece_model(config, workdir: str) -> str:
  """The spiece.model path to use: the configured one, or one trained here (see module doc)."""
  if config.text_encoder.spiece_model or int(config.precompute.spiece_vocab_size) <= 0:
    return str(config.text_encoder.spiece_model)
  path = os.path.join(workdir, "spiece.model")
  if os.path.exists(path):
    return path
  data = _split_data(config, config.precompute.splits[0])
  raw = sources.make_source(data).raw_examples(0, 1)
  caps = []
  for r in itertools.islice(raw, int(config.precompute.spiece_corpus_size)):
    try:
      caps.append(preprocess.normalize_caption(r.caption, int(data.max_caption_chars))[0])
    except preprocess.SkipExample:
      pass
  blob = train_spiece_model(caps, int(config.precompute.spiece_vocab_size))
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(blob)
  os.replace(tmp, path)  # every process writes the same bytes
  return path


# --- Shards ----------------------------------------------------------------------------------


def shard_name(split: str, process: int, shard: int) -> str:
  return f"{split}-{process:05d}-{shard:05d}"


def _write_json(path: str, obj) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


class ShardWriter:
  """Streams framed records into a temporary file; `finish()` renames it into place."""

  def __init__(self, path: str):
    for stale in glob.glob(glob.escape(path) + ".tmp-*"):  # left by a killed run
      os.remove(stale)
    self.path, self.tmp = path, f"{path}.tmp-{os.getpid()}"
    self.file = open(self.tmp, "wb")
    self.sha = hashlib.sha256()
    self.count = 0

  def write(self, recs: list[bytes]) -> None:
    if recs:
      blob = records.frame_records(recs)
      self.file.write(blob)
      self.sha.update(blob)
      self.count += len(recs)

  def finish(self) -> str:
    self.file.flush()
    os.fsync(self.file.fileno())
    self.file.close()
    os.replace(self.tmp, self.path)
    return self.sha.hexdigest()


@dataclasses.dataclass
class _Shard:
  index: int
  counter: SkipCounter
  examples: Iterator[dict]
  writer: ShardWriter | None = None


class _Progress:
  def __init__(self, split: str, total: int | None, every: int, stream, enabled: bool):
    self.split, self.total, self.every = split, total, max(int(every), 1)
    self.stream, self.enabled = stream, enabled
    self.start = time.perf_counter()
    self.done = self.written = self.skipped = self.batches = 0
    self.resumed = 0
    self._last = None

  def rate(self, live: SkipCounter | None = None) -> float:
    done = self.done + (live.seen if live is not None else 0)
    return (done - self.resumed) / max(time.perf_counter() - self.start, 1e-9)

  def update(self, batches: int = 0, force: bool = False,
             live: SkipCounter | None = None) -> None:
    """A line every `every` model batches: progress, examples/s (raw records), ETA."""
    self.batches += batches
    if not self.enabled or not (force or (batches and self.batches % self.every == 0)):
      return
    from muse_jax.training.reporting import format_duration, progress_bar
    done = self.done + (live.seen if live is not None else 0)
    written = self.written + (live.kept if live is not None else 0)
    skipped = self.skipped + (sum(live.skipped.values()) if live is not None else 0)
    if force and self._last == (done, written):
      return  # nothing new since the last line
    self._last = (done, written)
    rate = self.rate(live)
    if self.total:
      eta = (self.total - done) / rate if rate > 0 else float("inf")
      head = f"{progress_bar(done, self.total)} ETA {format_duration(eta)}"
    else:
      head = f"{done} records"
    print(f"precompute {self.split}: {head}, {rate:.1f} examples/s, written {written}, "
          f"skipped {skipped}", file=self.stream, flush=True)


def _expected_records(data, process_index: int, process_count: int) -> int | None:
  if data.source == "shapes":
    n = data.shapes.num_train if data.shapes.split == "train" else data.shapes.num_heldout
    return len(range(process_index, int(n), process_count))
  return None


def _allgather(values: Sequence[int]) -> np.ndarray:
  """[process_count, len(values)] of every process's values (no-op on one process)."""
  arr = np.asarray(values, np.int64)[None]
  if jax.process_count() == 1:
    return arr
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(arr[0])).reshape(jax.process_count(), -1)


class SplitWriter:
  """Writes this process's shards of one split, calling the models in lockstep."""

  def __init__(self, config, workdir: str, split: str, models: Models, spec: records.RecordSpec,
               stream=None):
    self.config, self.split, self.models, self.spec = config, split, models, spec
    self.pi, self.pc = jax.process_index(), jax.process_count()
    self.shard_dir = os.path.join(workdir, "shards")
    self.index_dir = os.path.join(workdir, "index")
    self.per_shard = int(config.precompute.examples_per_shard)
    self.batch = int(config.precompute.batch_size) // self.pc
    self.data = _split_data(config, split)
    self.options = preprocess.options_from_config(self.data)
    self.summary_path = os.path.join(self.index_dir, f"{split}-{self.pi:05d}.json")
    self.progress = _Progress(split, _expected_records(self.data, self.pi, self.pc),
                              config.precompute.log_every, stream or sys.stdout, self.pi == 0)

  def _entry_path(self, k: int) -> str:
    return os.path.join(self.index_dir, shard_name(self.split, self.pi, k) + ".json")

  def _shard_path(self, k: int) -> str:
    return os.path.join(self.shard_dir, shard_name(self.split, self.pi, k) + ".tfrecord")

  def _shards(self) -> Iterator[_Shard | dict]:
    """Shards to compute (`_Shard`), or the index entry (dict) of an already finished one."""
    raw = sources.make_source(self.data).raw_examples(self.pi, self.pc)
    workers = int(self.data.num_workers)
    for k in itertools.count():
      entry_path = self._entry_path(k)
      if os.path.exists(entry_path) and os.path.exists(self._shard_path(k)):
        entry = _read_json(entry_path)
        consumed = sum(1 for _ in itertools.islice(raw, self.per_shard))
        if consumed != entry["seen"]:
          raise RuntimeError(f"{entry_path} says {entry['seen']} raw records but the source now "
                             f"gives {consumed}: the source changed; use a new workdir")
        yield entry
        if consumed < self.per_shard:
          return
        continue
      chunk = list(itertools.islice(raw, 1))
      if not chunk:
        return
      counter = SkipCounter()
      examples = preprocess.preprocess_stream(
          itertools.chain(chunk, itertools.islice(raw, self.per_shard - 1)), self.options,
          counter, num_workers=workers)
      yield _Shard(k, counter, examples)
      if counter.seen < self.per_shard:
        return

  def _next_batch(self, shard: _Shard) -> list[dict]:
    return list(itertools.islice(shard.examples, self.batch))

  def _model_batch(self, examples: list[dict]) -> dict[str, np.ndarray]:
    """Run the models on `examples` padded to the per-process batch."""
    pad = self.batch - len(examples)
    res_lo, res_hi = self.models.resolution, self.models.sr_resolution

    def images(res):
      arr = np.zeros((self.batch, res, res, 3), np.uint8)
      for i, ex in enumerate(examples):
        arr[i] = ex["image"][res]
      return arr

    captions = [ex["caption"] for ex in examples] + [""] * pad
    return self.models.run(images(res_lo), images(res_hi) if res_hi else None, captions)

  def _encode(self, examples: list[dict], out: dict[str, np.ndarray]) -> list[bytes]:
    recs = []
    for i, ex in enumerate(examples):
      n = int(out["text_len"][i])
      rec = {"id": ex["id"], "caption": ex["caption"], "tokens_lo": out["tokens_lo"][i],
             "text_emb": out["text_emb"][i, :n], "text_len": n}
      if "tokens_hi" in out:
        rec["tokens_hi"] = out["tokens_hi"][i]
      recs.append(records.encode_example(rec, self.spec))
    return recs

  def _finish_shard(self, shard: _Shard) -> dict:
    c = shard.counter
    sha = shard.writer.finish()
    entry = {"file": os.path.basename(shard.writer.path), "process": self.pi,
             "shard": shard.index, "records": shard.writer.count, "seen": c.seen,
             "skipped": dict(sorted(c.skipped.items())), "notes": dict(sorted(c.notes.items())),
             "sha256": sha}
    if entry["records"] != c.kept:
      raise RuntimeError(f"shard {entry['file']}: wrote {entry['records']} records but "
                         f"{c.kept} were kept")
    _write_json(self._entry_path(shard.index), entry)
    return entry

  def run(self) -> dict:
    """Writes the missing shards of this process; returns its summary for the split."""
    os.makedirs(self.shard_dir, exist_ok=True)
    os.makedirs(self.index_dir, exist_ok=True)
    done_already = os.path.exists(self.summary_path)
    shards = iter(()) if done_already else self._shards()
    entries: list[dict] = []
    current: _Shard | None = None
    exhausted = done_already
    prog = self.progress
    while True:
      examples: list[dict] = []
      while not exhausted and not examples:
        if current is None:
          item = next(shards, None)
          if item is None:
            exhausted = True
            break
          if isinstance(item, dict):
            entries.append(item)
            prog.done += item["seen"]
            prog.resumed += item["seen"]
            prog.written += item["records"]
            prog.skipped += item["seen"] - item["records"]
            continue
          current = item
          current.writer = ShardWriter(self._shard_path(current.index))
        examples = self._next_batch(current)
        if len(examples) < self.batch:  # the shard is used up: finish it after this batch
          break
      status = _allgather([len(examples), int(exhausted)])
      if status[:, 0].any():  # every process calls the models, with padding if it has none
        out = self._model_batch(examples)
        if examples:
          current.writer.write(self._encode(examples, out))
      if current is not None and len(examples) < self.batch:
        entries.append(self._finish_shard(current))
        prog.done += current.counter.seen
        prog.written += current.counter.kept
        prog.skipped += current.counter.seen - current.counter.kept
        current = None
      prog.update(batches=1 if status[:, 0].any() else 0,
                  live=current.counter if current is not None else None)
      if status[:, 1].all() and not status[:, 0].any():
        break
    if done_already:
      summary = _read_json(self.summary_path)
    else:
      summary = {"split": self.split, "process": self.pi,
                 "shards": sorted(entries, key=lambda e: e["shard"])}
      _write_json(self.summary_path, summary)
    prog.update(force=True)
    return summary


# --- Manifest --------------------------------------------------------------------------------


def _sum_counts(dicts) -> dict[str, int]:
  total: dict[str, int] = {}
  for d in dicts:
    for k, v in d.items():
      total[k] = total.get(k, 0) + int(v)
  return dict(sorted(total.items()))


def write_manifest(workdir: str, config, spec: records.RecordSpec, splits: Sequence[str],
                   process_count: int, extra: dict) -> dict:
  """Combine every process's index into WORKDIR/manifest.json (process 0)."""
  out_splits = {}
  for split in splits:
    shards = []
    for p in range(process_count):
      path = os.path.join(workdir, "index", f"{split}-{p:05d}.json")
      if not os.path.exists(path):
        raise RuntimeError(f"process {p} has not finished split {split!r} ({path} missing)")
      shards += _read_json(path)["shards"]
    shards.sort(key=lambda e: (e["process"], e["shard"]))
    out_splits[split] = {
        "files": [e["file"] for e in shards],
        "records_per_file": [e["records"] for e in shards],
        "records": sum(e["records"] for e in shards),
        "seen": sum(e["seen"] for e in shards),
        "skipped": _sum_counts(e["skipped"] for e in shards),
        "notes": _sum_counts(e["notes"] for e in shards),
        "sha256": [e["sha256"] for e in shards],
    }
  manifest = {"format_version": FORMAT_VERSION, "spec": spec.to_json(),
              "shard_dir": "shards", "splits": out_splits, "process_count": process_count,
              **extra, "config": json.loads(config.to_json_best_effort())}
  _write_json(os.path.join(workdir, MANIFEST), manifest)
  return manifest


def read_manifest(path: str) -> dict:
  """The manifest of a precompute output directory (or of the manifest file itself)."""
  file = path if path.endswith(".json") else os.path.join(path, MANIFEST)
  if not os.path.exists(file):
    raise FileNotFoundError(f"no {MANIFEST} in {path!r}: run `python -m muse_jax.precompute "
                            f"--workdir={path}` first (or point data.path at its output)")
  m = _read_json(file)
  if m.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{file}: format_version {m.get('format_version')} is not "
                     f"{FORMAT_VERSION}; rerun precompute with this version")
  return m


# --- Entry -----------------------------------------------------------------------------------


def validate_config(config, process_count: int, dp: int) -> None:
  p = config.precompute
  b = int(p.batch_size)
  if b <= 0 or b % process_count or b % dp:
    raise ValueError(f"precompute.batch_size={b} must be a positive multiple of the process "
                     f"count ({process_count}) and of the data-parallel size ({dp})")
  if process_count > 1 and (b // process_count) % dp:
    raise ValueError(f"precompute.batch_size={b}: in multi-process runs the per-process batch "
                     f"({b // process_count}) must be a multiple of the data-parallel size "
                     f"({dp}) (TextEncoder.encode_tokens); use {process_count * dp}")
  if int(p.examples_per_shard) <= 0:
    raise ValueError(f"precompute.examples_per_shard={p.examples_per_shard} must be > 0")
  if not tuple(p.splits):
    raise ValueError("precompute.splits is empty; e.g. ('train', 'heldout') for shapes")
  if len(p.splits) > 1 and config.data.source in ("tfrecord", "folder"):
    raise ValueError(f"data.source={config.data.source!r} has no named splits: give one "
                     "precompute.splits entry per run (e.g. a second run for eval data)")
  if int(config.tokenizer.resolution) <= 0:
    raise ValueError("tokenizer.resolution must be > 0 (the low-res side, e.g. 256)")


def run_precompute(config, workdir: str, *, stream=None,
                   models_fn: Callable[..., Models] | None = None) -> dict | None:
  """Write the shards of every split in `config.precompute.splits`; returns the manifest
  (on process 0; None elsewhere). `models_fn(config, mesh, spiece_model)` overrides the
  model construction (tests)."""
  from muse_jax.parallel.mesh import data_parallel_size, make_mesh
  stream = stream or sys.stdout
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  mesh = make_mesh(config.mesh)
  validate_config(config, jax.process_count(), data_parallel_size(mesh))
  t0 = time.perf_counter()
  spiece = ensure_spiece_model(config, workdir)
  models = (models_fn or build_models)(config, mesh, spiece)
  spec = models.spec()
  if jax.process_index() == 0:
    print(f"precompute: {jax.process_count()} process(es), {jax.device_count()} devices, "
          f"spec {spec.to_json()}; models ready in {time.perf_counter() - t0:.1f}s",
          file=stream, flush=True)
  rates = {}
  for split in config.precompute.splits:
    writer = SplitWriter(config, workdir, split, models, spec, stream)
    writer.run()
    p = writer.progress
    rates[split] = p.rate()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("muse_jax.precompute.done")
  if jax.process_index() != 0:
    return None
  extra = {"models": {
      "tokenizer": {"resolution": models.resolution, "weights": config.tokenizer.weights,
                    "grid": spec.grid_lo},
      "sr_tokenizer": ({"resolution": models.sr_resolution,
                        "weights": config.sr_tokenizer.weights, "grid": spec.grid_hi}
                       if spec.grid_hi else None),
      "text_encoder": {"size": config.text_encoder.size,
                       "weights": config.text_encoder.weights_path,
                       "spiece_sha256": _sha256_file(spiece) if spiece else ""},
  }}
  manifest = write_manifest(workdir, config, spec, tuple(config.precompute.splits),
                            jax.process_count(), extra)
  for split, s in manifest["splits"].items():
    skipped = ", ".join(f"{k}={v}" for k, v in s["skipped"].items()) or "none"
    print(f"precompute {split}: {s['records']} written of {s['seen']} seen "
          f"({len(s['files'])} files; skipped: {skipped}); this run "
          f"{rates[split]:.1f} examples/s on process 0", file=stream, flush=True)
  print(f"manifest: {os.path.join(workdir, MANIFEST)}", file=stream, flush=True)
  return manifest


def _sha256_file(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()
