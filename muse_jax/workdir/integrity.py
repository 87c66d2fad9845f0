"""What a checkpoint records about its train state, so that a restore can prove it intact.

`summarize(state)` computes, in one jitted pass over the state, whether every floating-point
leaf is finite and two position-weighted sums of each leaf's raw bits (mod 2**32):
`sum((2i + 1) * w_i)` and `sum(h(i) * w_i)` with `h(i)` an odd multiplicative hash of the
word index `i`. The weights are odd, hence invertible mod 2**32, so a change to any single
word always changes both sums, and moved words are caught too. The arithmetic is exact
integer arithmetic, so the sums do not depend on how the leaf is sharded: a checkpoint saved
on one mesh verifies on another.

Orbax/TensorStore do not checksum array data: bytes flipped inside a data file restore
silently as different numbers. The writer stores `summarize(state)` next to the state and the
restore recomputes it (`mismatch`).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = 1
_GOLDEN = np.uint32(0x9E3779B9)  # Knuth's multiplicative hash constant


def _words(x: jax.Array) -> jax.Array:
  """The raw bits of `x` as uint32 words (smaller items widened, 8-byte items split)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = x.dtype.itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size in (1, 2):
    unsigned = jnp.uint8 if size == 1 else jnp.uint16
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  return jax.lax.bitcast_convert_type(x, jnp.uint32)  # 8 bytes: a trailing axis of 2 words


def _index(shape: tuple[int, ...]) -> jax.Array:
  """Row-major word index built from per-axis iotas: no reshape, so a sharded leaf stays put."""
  idx = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    idx = idx + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride % 2**32)
    stride *= shape[axis]
  return idx


def _leaf(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)
  w = _words(x)
  i = _index(w.shape)
  sums = jnp.stack([jnp.sum(w * (2 * i + 1), dtype=jnp.uint32),
                    jnp.sum(w * ((i * _GOLDEN) | 1), dtype=jnp.uint32)])
  return finite, sums


@jax.jit
def _summaries(leaves: list) -> tuple[jax.Array, jax.Array]:
  if not leaves:
    return jnp.bool_(True), jnp.zeros((0, 2), jnp.uint32)
  finite, sums = zip(*(_leaf(x) for x in leaves))
  return jnp.all(jnp.stack(finite)), jnp.stack(sums)


def data_digest(data_state: dict) -> str:
  """sha256 of the input position as JSON (the `data` item is not covered by the sums)."""
  return hashlib.sha256(json.dumps(data_state, sort_keys=True).encode()).hexdigest()


def summarize(state: Any, data_state: Optional[dict] = None) -> dict:
  """{'format', 'finite', 'checksums': {leaf path: [sum1, sum2]}, 'data_sha256'} (JSON-able)."""
  flat = jax.tree_util.tree_leaves_with_path(state)
  finite, sums = jax.device_get(_summaries([leaf for _, leaf in flat]))
  out = {"format": FORMAT, "finite": bool(finite),
         "checksums": {jax.tree_util.keystr(path): [int(a), int(b)]
                       for (path, _), (a, b) in zip(flat, np.asarray(sums))}}
  if data_state is not None:
    out["data_sha256"] = data_digest(data_state)
  return out


def mismatch(recorded: dict, state: Any, data_state: dict) -> Optional[str]:
  """Why `state`/`data_state` differ from what `recorded` (a saved `summarize`) says; None
  when they match."""
  if recorded.get("format") != FORMAT:
    return f"unknown integrity record format {recorded.get('format')!r}"
  now = summarize(state, data_state)
  # The checksums first: an array whose bytes changed is named, also when the change made it
  # non-finite (a flipped exponent bit, a corrupted compressed block).
  want, got = recorded["checksums"], now["checksums"]
  if set(want) != set(got):
    extra = sorted(set(want) ^ set(got))
    return f"the checkpoint's arrays differ from the target's (e.g. {extra[0]})"
  for key in want:
    if list(want[key]) != got[key]:
      return f"checksum mismatch in {key} (its data changed after it was saved)"
  if recorded.get("data_sha256") not in (None, now["data_sha256"]):
    return "checksum mismatch in the input position (data item)"
  if not now["finite"]:
    return "the restored state holds NaN or Inf"
  return None
