"""Test helpers: numpy parameter init (jit-compiling random initialisers is slow on CPU)."""
import jax
import numpy as np


def np_params(abstract_params, seed: int = 0):
  """Variance-scaled random params for any conv model tree (kernels HWIO or [in, out])."""
  rng = np.random.default_rng(seed)

  def one(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    shape = tuple(leaf.shape)
    if name == "scale":
      return np.ones(shape, np.float32)
    if name == "bias":
      return np.zeros(shape, np.float32)
    fan_in = int(np.prod(shape[:-1])) if name == "kernel" else shape[-1]
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(one, abstract_params)
