"""The integrity record of a checkpoint: sharding-independent sums that catch any single
changed word, and the finite check."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from muse_jax.workdir import integrity


def tree():
  rng = np.random.default_rng(0)
  return {"w": rng.standard_normal((16, 8)).astype(np.float32),
          "h": jnp.asarray(rng.standard_normal((4, 6)), jnp.bfloat16),
          "step": np.int32(7), "mask": np.arange(5) % 2 == 0, "key": jax.random.key(3)}


def test_sums_do_not_depend_on_the_sharding():
  t = tree()
  mesh = jax.make_mesh((4, 2), ("a", "b"))
  sharded = dict(t, w=jax.device_put(t["w"], NamedSharding(mesh, P("a", "b"))),
                 h=jax.device_put(t["h"], NamedSharding(mesh, P(None, "b"))))
  assert integrity.summarize(sharded) == integrity.summarize(t)


def test_every_single_bit_flip_and_a_swap_are_caught():
  t = tree()
  record = integrity.summarize(t, {"position": 3})
  assert integrity.mismatch(record, t, {"position": 3}) is None
  words = t["w"].view(np.uint32).reshape(-1)
  for i in range(words.size):
    for bit in (0, 17, 31):
      w = words.copy()
      w[i] ^= np.uint32(1 << bit)
      changed = dict(t, w=w.view(np.float32).reshape(t["w"].shape))
      assert "checksum mismatch in ['w']" in integrity.mismatch(record, changed,
                                                                {"position": 3})
  w = t["w"].copy()
  w[0, 0], w[3, 5] = t["w"][3, 5], t["w"][0, 0]
  assert integrity.mismatch(record, dict(t, w=w), {"position": 3}) is not None
  assert "input position" in integrity.mismatch(record, t, {"position": 4})


def test_a_nan_or_inf_anywhere_makes_the_state_non_finite():
  t = tree()
  assert integrity.summarize(t)["finite"]
  for bad in (np.nan, np.inf):
    w = t["w"].copy()
    w[5, 2] = bad
    assert not integrity.summarize(dict(t, w=w))["finite"]
  h = t["h"].at[1, 1].set(jnp.nan)
  assert not integrity.summarize(dict(t, h=h))["finite"]
