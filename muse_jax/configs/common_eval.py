"""The `eval` section of base and SR training configs: evaluation of samples during training.

Every `eval.samples.every` steps (0: off, the default), the run samples a fixed caption set
through the stage being trained and the stages it needs, scores the samples with the configured
metrics and logs them to metrics.jsonl and TensorBoard with a sample grid
(muse_jax/evaluation/during_training.py; docs/evaluation.md, "During training"). Caption i is
sampled with the key fold_in(key(seed), i), as `python -m muse_jax.evaluate` samples it, so
the figures at step N are those of `muse_jax.evaluate` on the checkpoint of step N with the
same settings.
"""
import ml_collections

from muse_jax.configs import common_sampling


def samples_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dict(
      every=0,                  # steps between evaluations (and the last step); 0: off
      # Caption sets: 'FILE' or 'NAME=FILE,NAME=FILE' (one caption per line, blank lines
      # skipped). Each set is scored and logged on its own: eval/<metric>/<NAME>/<value>.
      captions="",
      num=0,                    # the first N captions of each set (0: all)
      metrics="compositional",  # comma-separated: fid, clip, compositional
      batch_size=16,            # captions per sampling call (the last batch is padded)
      seed=0,                   # caption i's key: fold_in(key(seed), i)
      grid=16,                  # images in the TensorBoard grid of each set (0: none)
      # The text encoder and tokenizers: those of the precompute in `precompute` ('' =
      # data.path), as `muse_jax.evaluate --base` finds them; each may be overridden.
      precompute="",
      spiece_model="",
      vq_lo="",
      vq_hi="",
      base_workdir="",          # sr stage: the trained base stage's workdir (or export)
      # fid: reference statistics (.npz of `muse_jax.evaluate --save_stats`) and the network.
      reference_stats="",
      inception_weights="",     # '' = random weights (figures not comparable; logged as such)
      inception_variant="fid",
      inception_size=299,
      # clip: a Hugging Face CLIP directory; '' = random weights of `clip_model`.
      clip_weights="",
      clip_model="vit_b32",
  ))
  c.sampling = common_sampling.get_sampling_config()
  return c


def eval_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(samples=samples_config()))
