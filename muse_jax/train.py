r"""Train a Muse stage (vqgan, base or sr) from a config; resumes from WORKDIR's checkpoints.

  python -m muse_jax.train --config=configs/tiny.py --workdir=/tmp/run \
      [--config.train.num_steps=40 --config.train.batch_size=16 ...]

At the paper's sizes, on your data: train the VQ tokenizer on a folder of images, precompute
VQ tokens and T5 features of your images and captions into shards (python -m
muse_jax.precompute --help; configs/precompute_<source>.py), then train the transformer on them:

  python -m muse_jax.train --config=configs/vqgan_f16_256.py --workdir=RUNS/vq \
      --config.data.source=folder --config.data.path=IMAGES \
      --config.loss.perceptual_weights=lpips_vgg16.safetensors
  python -m muse_jax.train --config=configs/base_632m.py --workdir=RUNS/base \
      --config.data.source=precomputed --config.data.path=SHARDS

The config's `stage` picks what is trained. Any config value can be overridden with
--config.<section>.<key>=VALUE. Pointing --workdir at a directory that holds checkpoints
resumes from the newest one (parameters, optimizer, step and input position).

Before the first step, process 0 prints what the run runs on: platform, device kind and count,
processes, mesh, parameter count, global and per-device batch, workdir.

Writes to WORKDIR: checkpoints/ (Orbax), metrics.jsonl (every step's scalars),
tensorboard/ (TensorBoard events), config.json.

Base and SR stages evaluate samples every `eval.samples.every` steps when it is set: a fixed
caption set sampled through the stage and scored (fid, clip, compositional), logged to
metrics.jsonl and TensorBoard as eval/<metric>/<set>/<value> with a sample grid
(docs/evaluation.md, "During training").

A newest checkpoint that cannot be restored intact is reported in one line, moved to
WORKDIR/checkpoints_rejected/ and the run resumes from the newest intact one.

Exit status: 0 done; 2 bad config or mesh, an unreadable weights file, an unwritable workdir,
or no checkpoint that can be restored; 3 non-finite loss or state (the last good checkpoint is
kept and named); 5 a checkpoint or metrics write failed mid-run (disk full, permission denied;
the previous checkpoint is kept); 6 out of accelerator memory (the message says what to
lower); 130 Ctrl-C and 143 SIGTERM/preemption (to any process of a multi-process run), after
saving a checkpoint (rerun to resume); 134 another process of a multi-process run died (JAX's
heartbeat ends the others).

Multi-process: jax.distributed is initialised from --coordinator_address/--num_processes/
--process_id, the JAX_COORDINATOR_ADDRESS environment variable, or the cluster (SLURM, TPU pods).
"""
import logging

from absl import app

from muse_jax.configs.cli_flags import define_job_flags, parse_flags
from muse_jax.parallel import distributed

FLAGS = define_job_flags("Path to a configs/<name>.py file.",
                         "Directory for checkpoints, metrics and TensorBoard.")


def main(argv):
  del argv
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every file at INFO
  distributed.initialize_from_flags()
  import jax
  from muse_jax.cli import run_or_exit
  from muse_jax.evaluation.during_training import SampleEvaluation
  from muse_jax.training.banner import run_banner
  from muse_jax.training.loop import Trainer
  from muse_jax.training.registry import validate
  config = FLAGS.config

  def run():
    validate(config)
    main_process = jax.process_index() == 0
    hook = SampleEvaluation.from_config(
        config, log=lambda line: main_process and print(line, flush=True))
    trainer = Trainer(config, FLAGS.workdir, hooks=[hook] if hook else [])
    if main_process:
      print(run_banner(config, trainer.mesh, trainer.abstract_state, trainer.workdir), flush=True)
    trainer.run()

  run_or_exit(run)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
