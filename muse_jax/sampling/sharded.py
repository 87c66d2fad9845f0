"""Text-to-image tokens with one key per image, sampled on a device mesh (rows sharded).

`per_image.generate` samples on one device. A training run's parameters live sharded over its
mesh, on every process; sampling them where they are avoids gathering a copy:

  tokens = sample_tokens(loaded, "base", opts, cond, uncond, keys, mesh)   # numpy [B, T]

Each row is the batch-1 computation of `stage_fns.sample_stage` with its own key, `jax.vmap`ped
over rows as `per_image` does; the rows are sharded over the mesh's `data` and `fsdp` axes
(replicated when the batch does not divide them) and the parameters keep their shardings.
The call is a collective: every process calls it with the same arguments (host arrays equal
on every process) and gets every row back (`process_allgather`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from muse_jax.sampling.stage_fns import sample_stage, sampler_compiler_options

KEY_IMPL = "threefry2x32"   # per_image.image_keys' keys

# Jitted functions per (model definition, stage, options, mask id, SR); the value keeps the
# model definition alive so that its id is not reused while cached.
_FNS: dict = {}


def row_sharding(mesh: Mesh, rows: int) -> NamedSharding:
  """Rows over the data-parallel axes when they divide them, else replicated."""
  dp = int(mesh.shape.get("data", 1)) * int(mesh.shape.get("fsdp", 1))
  return NamedSharding(mesh, P(("data", "fsdp")) if rows % dp == 0 else P())


def global_array(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A host array that every process holds whole, as a global array of `sharding`."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _fn(loaded, stage: str, opts: dict, with_lo: bool, out_sharding):
  key = (id(loaded.model_def), stage, tuple(sorted(opts.items())), loaded.mask_id, with_lo,
         out_sharding)
  if key not in _FNS:
    one = functools.partial(sample_stage, loaded.model_def, stage, "decode", opts,
                            loaded.mask_id)
    axes = (None, 0, 0, 0, 0, 0, 0, 0, 0 if with_lo else None)
    t = loaded.grid ** 2

    def rows(params, text, text_len, utext, ulen, key_data, lo):
      b = text.shape[0]
      tokens = jnp.full((b, 1, t), loaded.mask_id, jnp.int32)
      mask = jnp.ones((b, 1, t), bool)
      keys = jax.random.wrap_key_data(key_data, impl=KEY_IMPL)
      out = jax.vmap(one, in_axes=axes)(params, tokens, mask, text, text_len, utext, ulen,
                                        keys, lo)
      return out[:, 0]

    fn = jax.jit(rows, out_shardings=out_sharding, compiler_options=sampler_compiler_options())
    _FNS[key] = (loaded.model_def, fn)
  return _FNS[key][1]


def pad_text(x: np.ndarray, length: int) -> np.ndarray:
  """[B, S, D] text zero-padded to `length` tokens (never cut)."""
  return x if x.shape[1] >= length else np.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0)))


def sample_tokens(loaded, stage: str, opts: dict, cond, uncond, key_data: np.ndarray,
                  mesh: Mesh, tokens_lo=None) -> np.ndarray:
  """All tokens of `stage` ('base' or 'sr') for each row with its own key -> int32 [B, T].

  `loaded` is a sampling.loading.LoadedStage whose params are arrays on `mesh`; `cond` and
  `uncond` are (embeddings float32 [B, S, D], lengths int32 [B]) host arrays; `key_data` is
  uint32 [B, 2], the data of threefry keys; `tokens_lo` int32 [B, T_lo] (SR only).
  """
  b = key_data.shape[0]
  sh = row_sharding(mesh, b)
  row = lambda x: global_array(np.asarray(x)[:, None], sh)   # noqa: E731 (each row a batch of 1)
  length = int(loaded.model.text_length)
  text, utext = (pad_text(np.asarray(c[0], np.float32), length) for c in (cond, uncond))
  args = [row(text), row(np.asarray(cond[1], np.int32)), row(utext),
          row(np.asarray(uncond[1], np.int32)), global_array(np.asarray(key_data, np.uint32), sh),
          None if tokens_lo is None else row(np.asarray(tokens_lo, np.int32))]
  out = _fn(loaded, stage, opts, tokens_lo is not None, sh)(loaded.params, *args)
  return np.asarray(multihost_utils.process_allgather(out, tiled=True))
