"""Turn an NNX module into pure functions over a plain nested dict of parameters.

Trainers, checkpoints and exporters see parameters as nested dicts of arrays (stable,
framework-neutral keys such as `blocks/attn/qkv/kernel`); models stay ordinary NNX modules.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
from flax import nnx
from jax.sharding import PartitionSpec as P


@dataclasses.dataclass(frozen=True)
class FunctionalModel:
  """graphdef + an abstract state template; `bind(params)` rebuilds the module."""
  graphdef: Any
  template: Any  # nnx.State of abstract Variables

  def bind(self, params) -> nnx.Module:
    state = jax.tree.map(lambda x: x, self.template)  # fresh Variables, same metadata
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(self.graphdef, state)

  def abstract_params(self):
    return self.template.to_pure_dict()

  def logical_axes(self):
    """Nested dict (same keys as params) of logical-axis tuples, from `out_sharding`."""
    specs = nnx.get_partition_spec(self.template).to_pure_dict()
    return jax.tree.map(lambda s: tuple(s), specs, is_leaf=lambda s: isinstance(s, P))


def functionalize(make_module: Callable[[nnx.Rngs], nnx.Module]):
  """Returns (FunctionalModel, init_fn) where init_fn(key) -> params (pure dict).

  `make_module(rngs)` builds the module; it is only traced (eval_shape) here, and `init_fn`
  is jit-able with explicit out_shardings so large models initialise directly sharded.
  """
  abstract = nnx.eval_shape(lambda: make_module(nnx.Rngs(0)))
  graphdef, template = nnx.split(abstract, nnx.Param)
  rest = nnx.split(abstract, nnx.Param, ...)[2]
  if jax.tree.leaves(rest):
    raise ValueError("models must hold only nnx.Param state (no batch stats/caches); "
                     f"found {rest}")

  def init_fn(key):
    module = make_module(nnx.Rngs(key))
    return nnx.split(module, nnx.Param)[1].to_pure_dict()

  return FunctionalModel(graphdef, template), init_fn
