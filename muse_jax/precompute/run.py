"""Precompute: raw images + captions -> VQ tokens + frozen T5 embeddings, as sharded TFRecords.

`run_precompute(config, workdir)` (the library behind `python -m muse_jax.precompute`) runs the
VQ tokenizer (and the super-resolution tokenizer, when `sr_tokenizer.resolution` > 0) and the
T5 encoder, jitted with the batch sharded over the mesh, on this process's disjoint slice of
each split of the raw source (`muse_jax.data.raw_sources`), and writes:

  WORKDIR/shards/{split}-{process:05d}-{shard:05d}.tfrecord   the records (records.py format)
  WORKDIR/index/{split}-{process:05d}-{shard:05d}.json        one per finished shard: records,
                                                               skips by reason, bytes, sha256
  WORKDIR/index/{split}-{process:05d}.json                     this process finished the split
  WORKDIR/manifest.json        (process 0, at the end) record spec, per-split files and counts
                               (written, seen, skipped by reason), models, config
  WORKDIR/skipped.jsonl        (process 0, at the end) every skipped record: split, id, reason
  WORKDIR/spiece.model         when precompute.spiece_vocab_size > 0 and no spiece_model is
                               given: a sentencepiece model trained on the captions (demos)

How shards are formed, resumed after a kill and written in lockstep by several processes is in
shards.py; the models are in models.py, the manifest in muse_jax/data/manifest.py.
"""
from __future__ import annotations

import io
import itertools
import os
import sys
import time
from typing import Callable, Sequence

import jax
from etils import epath

from muse_jax import paths
from muse_jax.configs.checks import ConfigError
from muse_jax.data import preprocess, raw_sources
from muse_jax.data.manifest import MANIFEST, sha256_file, write_manifest
from muse_jax.parallel.mesh import data_parallel_size, make_mesh
from muse_jax.precompute.models import Models, build_models
from muse_jax.precompute.shards import SplitWriter, split_data

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


def ensure_spiece_model(config, workdir: str) -> str:
  """The spiece.model path to use: the configured one, or one trained here (see module doc)."""
  if config.text_encoder.spiece_model or int(config.precompute.spiece_vocab_size) <= 0:
    return str(config.text_encoder.spiece_model)
  path = os.path.join(workdir, "spiece.model")
  if epath.Path(path).exists():
    return path
  data = split_data(config, config.precompute.splits[0])
  raw = raw_sources.make_source(data).raw_examples(0, 1)
  caps = []
  for r in itertools.islice(raw, int(config.precompute.spiece_corpus_size)):
    r = r.load() if r.load is not None else r
    try:
      caps.append(preprocess.normalize_caption(r.caption, int(data.max_caption_chars))[0])
    except preprocess.SkipExample:
      pass
  blob = train_spiece_model(caps, int(config.precompute.spiece_vocab_size))
  paths.write_atomic(path, blob)  # every process writes the same bytes
  return path


# --- Entry -----------------------------------------------------------------------------------


def validate_config(config, process_count: int, dp: int) -> None:
  p = config.precompute
  b = int(p.batch_size)
  if b <= 0 or b % process_count or b % dp:
    raise ConfigError(f"precompute.batch_size={b} must be a positive multiple of the process "
                     f"count ({process_count}) and of the data-parallel size ({dp})")
  if process_count > 1 and (b // process_count) % dp:
    raise ConfigError(f"precompute.batch_size={b}: in multi-process runs the per-process batch "
                     f"({b // process_count}) must be a multiple of the data-parallel size "
                     f"({dp}) (TextEncoder.encode_tokens); use {process_count * dp}")
  if int(p.examples_per_shard) <= 0:
    raise ConfigError(f"precompute.examples_per_shard={p.examples_per_shard} must be > 0")
  if not tuple(p.splits):
    raise ConfigError("precompute.splits is empty; e.g. ('train', 'heldout') for shapes")
  if len(p.splits) > 1 and config.data.source not in ("shapes", "tfds"):
    raise ConfigError(f"data.source={config.data.source!r} has no named splits: give one "
                     "precompute.splits entry per run (e.g. a second run for eval data)")
  if int(config.tokenizer.resolution) <= 0:
    raise ConfigError("tokenizer.resolution must be > 0 (the low-res side, e.g. 256)")


def run_precompute(config, workdir: str, *, stream=None,
                   models_fn: Callable[..., Models] | None = None) -> dict | None:
  """Write the shards of every split in `config.precompute.splits`; returns the manifest
  (on process 0; None elsewhere). `models_fn(config, mesh, spiece_model)` overrides the
  model construction (tests)."""
  stream = stream or sys.stdout
  workdir = str(paths.resolve(workdir))
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  mesh = make_mesh(config.mesh)
  validate_config(config, jax.process_count(), data_parallel_size(mesh))
  # Building each split's source checks its section (an empty path or name, a missing tf
  # extra) before the models load, which takes minutes at full size.
  for split in config.precompute.splits:
    raw_sources.make_source(split_data(config, split))
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
                       "spiece_sha256": sha256_file(spiece) if spiece else ""},
  }}
  manifest = write_manifest(workdir, config, spec, tuple(config.precompute.splits),
                            jax.process_count(), extra)
  for split, s in manifest["splits"].items():
    skipped = ", ".join(f"{k}={v}" for k, v in s["skipped"].items()) or "none"
    print(f"precompute {split}: {s['records']} written of {s['seen']} seen "
          f"({len(s['files'])} files; skipped: {skipped}); this run "
          f"{rates[split]:.1f} examples/s on process 0", file=stream, flush=True)
  listing = manifest["skipped_list"]
  if listing["records"] or listing["unlisted"]:
    print(f"skipped records: {os.path.join(workdir, listing['file'])} ({listing['records']} "
          f"listed" + (f", {listing['unlisted']} skipped by an older version unlisted"
                       if listing["unlisted"] else "") + ")", file=stream, flush=True)
  print(f"manifest: {os.path.join(workdir, MANIFEST)}", file=stream, flush=True)
  return manifest
