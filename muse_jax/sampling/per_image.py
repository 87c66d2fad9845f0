"""Text-to-image with one random key per image, so that image i does not depend on its batch.

`Pipeline.generate(prompts, seed)` draws the randomness of a whole batch from one key: the
Gumbel noise of row i depends on the batch size and on the row's position. An evaluation that
must give the same image for caption i however the captions are batched, and again after a
restart from any chunk, needs a key per image instead:

  keys = image_keys(seed, indices)          # fold_in(key(seed), index), one per image
  out = generate(pipe, prompts, keys)       # a pipeline.Result, like Pipeline.generate

Row i is what the pipeline's own stage functions make for prompt i alone with key i split into
(base, SR) keys: each stage function (`stage_fns.sample_stage`) is `jax.vmap`ped over rows of
batch 1, so every row runs the batch-1 computation with its own key. Rows may differ from a
batch-1 call in float round-off only (XLA may order a batched matmul's sums differently), which
can flip a near-tied sampled token; with a fixed batch size the result is exactly reproducible.
Guidance, steps and the negative prompt come from `pipe.sampling`, as for `generate`.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from muse_jax.sampling.pipeline import Result
from muse_jax.sampling.stage_fns import sample_stage, sampler_compiler_options


def image_keys(seed: int, indices: Sequence[int]) -> jax.Array:
  """[N] threefry keys fold_in(key(seed), index): image `index`'s key, whatever batch it is in.

  Always threefry, whatever the pipeline's `rng_impl`: a vmapped threefry draw equals the
  unbatched draw of each key, while 'rbg' keys draw other bits under vmap, depending on the
  batch.
  """
  base = jax.random.key(int(seed), impl="threefry2x32")
  idx = np.asarray(indices, np.int64)
  if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= 2 ** 32)):
    raise ValueError(f"image indices must be a list of integers in [0, 2^32), got {indices!r}")
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(idx, jnp.uint32))


# Jitted, vmapped stage functions per (model definition, stage, options); the value keeps the
# model definition alive so that its id is not reused while cached.
_FNS: dict = {}


def _stage_fn(loaded, stage: str, opts: dict, with_lo: bool):
  key = (id(loaded.model_def), stage, tuple(sorted(opts.items())), loaded.mask_id, with_lo)
  if key not in _FNS:
    one = functools.partial(sample_stage, loaded.model_def, stage, "decode", opts,
                            loaded.mask_id)
    # params shared; tokens, mask, text, text_len, utext, ulen, key (and tokens_lo) per row.
    axes = (None, 0, 0, 0, 0, 0, 0, 0, 0 if with_lo else None)
    fn = jax.jit(jax.vmap(one, in_axes=axes), compiler_options=sampler_compiler_options())
    _FNS[key] = (loaded.model_def, fn)
  return _FNS[key][1]


def _pad(x, length: int):
  return x if x.shape[2] >= length else jnp.pad(
      x, ((0, 0), (0, 0), (0, length - x.shape[2]), (0, 0)))


def run_stage(pipe, stage: str, cond, uncond, keys, tokens_lo=None) -> jax.Array:
  """Decodes all tokens of `stage` ('base' or 'sr') for each row with its own key -> [B, T]."""
  loaded = getattr(pipe, stage)
  batch = cond[0].shape[0]
  t = loaded.grid ** 2
  length = int(loaded.model.text_length)
  # Each row becomes a batch of one: [B, 1, ...].
  text, text_len = _pad(cond[0][:, None], length), cond[1][:, None]
  utext, ulen = _pad(uncond[0][:, None], length), uncond[1][:, None]
  tokens = jnp.full((batch, 1, t), loaded.mask_id, jnp.int32)
  mask = jnp.ones((batch, 1, t), bool)
  lo = None if tokens_lo is None else jnp.asarray(tokens_lo, jnp.int32)[:, None]
  fn = _stage_fn(loaded, stage, pipe.options(stage, "decode"), lo is not None)
  return fn(loaded.params, tokens, mask, text, text_len, utext, ulen, keys, lo)[:, 0]


def generate(pipe, prompts: Sequence[str], keys: jax.Array, *,
             negative_prompt: Optional[str] = None) -> Result:
  """One image per prompt, prompt i sampled with keys[i] (see the module docstring)."""
  prompts = [prompts] if isinstance(prompts, str) else list(prompts)
  if keys.shape != (len(prompts),):
    raise ValueError(f"{len(prompts)} prompts need {len(prompts)} keys, got shape {keys.shape}")
  cond, uncond = pipe.conditions(prompts, negative_prompt)
  stage_keys = jax.vmap(jax.random.split)(keys)    # [B, 2]: (base, SR) as Pipeline._keys
  lo = run_stage(pipe, "base", cond, uncond, stage_keys[:, 0])
  hi = None
  if pipe.sr is not None:
    hi = run_stage(pipe, "sr", cond, uncond, stage_keys[:, 1], tokens_lo=lo)
  return Result(images=pipe.decode_tokens(lo, hi), tokens_lo=np.asarray(lo),
                tokens_hi=None if hi is None else np.asarray(hi))
