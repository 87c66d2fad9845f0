r"""Precompute training shards: VQ tokens of the images and frozen T5 embeddings of the captions.

  python -m muse_jax.precompute --config=configs/shapes_precompute.py --workdir=DIR \
      [--config.precompute.batch_size=256 --config.tokenizer.weights=VQGAN_WORKDIR ...]

Runs the VQ tokenizer (and the super-resolution tokenizer when sr_tokenizer.resolution > 0)
and the T5 encoder, jitted with the batch sharded over the mesh, on every split in
config.precompute.splits; each process handles its own disjoint slice of the raw source.

Writes to DIR: shards/{split}-{process}-{shard}.tfrecord (one tf.train.Example per image: id,
caption, tokens_lo, tokens_hi, text_emb (bf16, valid positions only), text_len; see
muse_jax/data/records.py), index/ (one entry per finished shard), manifest.json (record
shapes, files, counts written and skipped by reason, models, config) and skipped.jsonl (the id
and reason of every skipped record, so dropped files can be found). A progress line with
examples/s and ETA is printed every config.precompute.log_every batches.

Sources (config.data.source): shapes, tfds, tfrecord, folder, webdataset (img2dataset tar
shards) and parquet; configs/precompute_<source>.py shows each.

Rerunning the same command after a kill resumes: finished shards are skipped without running
the models, and the output is the same as that of an uninterrupted run.

Train from the output with data.source=precomputed and data.path=DIR (e.g.
configs/shapes_base_tiny.py).

Exit status: 0 done; 2 bad config or mesh.

Multi-process: jax.distributed is initialised from --coordinator_address/--num_processes/
--process_id, the JAX_COORDINATOR_ADDRESS environment variable, or the cluster (SLURM, TPU pods);
DIR must be shared by all processes.
"""
import logging

from absl import app

from muse_jax.configs.cli_flags import define_job_flags, parse_flags
from muse_jax.parallel import distributed

FLAGS = define_job_flags("Path to a precompute config, e.g. configs/shapes_precompute.py.",
                         "Output directory (shards, index, manifest.json).")


def main(argv):
  del argv
  logging.getLogger("absl").setLevel(logging.WARNING)
  distributed.initialize_from_flags()
  from muse_jax.cli import run_or_exit
  from muse_jax.precompute.run import run_precompute
  run_or_exit(lambda: run_precompute(FLAGS.config, FLAGS.workdir),
              user_errors=(ValueError, FileNotFoundError))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
