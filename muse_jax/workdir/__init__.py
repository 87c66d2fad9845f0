"""The run directory (workdir) and everything stored in it.

  WORKDIR/config.json                 the whole training config (saved_config.py)
  WORKDIR/checkpoints/<step>/state    the train state, Orbax (written by checkpointer.py,
                                      read by checkpoints.py)
  WORKDIR/checkpoints/<step>/data     the input position (JSON)
  WORKDIR/checkpoints/<step>/integrity  finite flag, checksums of the state (integrity.py)
  WORKDIR/checkpoints_rejected/<step> steps moved aside: unreadable, altered, or the start of
                                      a non-finite step
  WORKDIR/metrics.jsonl, tensorboard/ written by muse_jax.training.reporting
  EXPORT/                             a portable export of one stage (export_io.py)

Writers and readers of this layout live here and nowhere else.
"""
