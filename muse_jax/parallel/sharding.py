"""Logical axis names -> mesh shardings.

Models name dimensions logically (`embed`, `mlp`, `heads`, `act_batch`, ...). The config's
`mesh.rules` is a list of `(logical_name, mesh_axes)` pairs, where `mesh_axes` is a mesh axis
name, a tuple of them, or None (replicated). Resolution per array:
- each logical name takes its rule's mesh axes, minus any already used by an earlier dimension
  of the same array, minus axes of size 1;
- a dimension whose size is not divisible by the product of its mesh axes is replicated
  instead (so tiny test models run on any mesh), and this is reported by `explain`.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Rules = Sequence[tuple[str, Any]]

# Logical axis -> mesh axes. Parameters: `embed` is FSDP-sharded, `mlp`/`heads`/`vocab` are
# tensor-sharded. Activations (`act_*`) shard the batch over data x fsdp.
DEFAULT_RULES = (
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("layers", None),
    ("conv_out", None),
)

_ctx = threading.local()


def _rule_table(rules: Rules) -> dict[str, tuple[str, ...]]:
  table = {}
  for name, axes in rules:
    if axes is None:
      table[name] = ()
    elif isinstance(axes, str):
      table[name] = (axes,)
    else:
      table[name] = tuple(axes)
  return table


def logical_to_spec(logical_axes: Sequence[str | None], mesh: Mesh, rules: Rules,
                    shape: Sequence[int] | None = None) -> P:
  """PartitionSpec for an array whose dims carry `logical_axes`."""
  table = _rule_table(rules)
  used: set[str] = set()
  out = []
  for i, name in enumerate(logical_axes):
    axes = table.get(name, ()) if name is not None else ()
    axes = tuple(a for a in axes if a not in used and mesh.shape.get(a, 1) > 1)
    if shape is not None and axes:
      size = int(np.prod([mesh.shape[a] for a in axes]))
      if shape[i] % size:
        axes = ()
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*out)


def named_sharding(logical_axes, mesh: Mesh, rules: Rules, shape=None) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(logical_axes, mesh, rules, shape))


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules: Rules):
  """Within this context, `constrain` applies sharding constraints (used inside jit)."""
  prev = getattr(_ctx, "value", None)
  _ctx.value = (mesh, rules)
  try:
    yield
  finally:
    _ctx.value = prev


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """`with_sharding_constraint` by logical names; a no-op outside `activation_rules`."""
  active = getattr(_ctx, "value", None)
  if active is None:
    return x
  mesh, rules = active
  return jax.lax.with_sharding_constraint(
      x, named_sharding(logical_axes, mesh, rules, x.shape))


def per_shard(fn, args, logical_axes, out_axes):
  """`fn(*args)` on each device's shard (`jax.shard_map`) under `activation_rules`.

  For kernels XLA cannot partition (Pallas calls, which it would otherwise run on gathered
  operands): `logical_axes` names each arg's dims and `out_axes` the output's; `fn` must be
  independent along the sharded dims. Outside `activation_rules`, or on one device, it is
  `fn(*args)`.
  """
  active = getattr(_ctx, "value", None)
  if active is None or active[0].size == 1:
    return fn(*args)
  mesh, rules = active
  in_specs = tuple(logical_to_spec(a, mesh, rules, x.shape) for x, a in zip(args, logical_axes))
  out_shape = jax.eval_shape(fn, *args)
  out_specs = logical_to_spec(out_axes, mesh, rules, out_shape.shape)
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                       check_vma=False)(*args)


def _path_key(path) -> tuple:
  return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", str(k)))) for k in path)


def tree_shardings(abstract_tree, logical_tree, mesh: Mesh, rules: Rules):
  """Map a tree of ShapeDtypeStructs and a same-shaped tree of logical axes to shardings."""
  def one(x, axes):
    axes = tuple(axes) if axes is not None else (None,) * len(x.shape)
    return named_sharding(axes, mesh, rules, x.shape)
  return jax.tree.map(one, abstract_tree, logical_tree,
                      is_leaf=lambda t: isinstance(t, (tuple, P)) or t is None)


def derived_shardings(abstract_tree, param_abstract, param_shardings, mesh: Mesh):
  """Shardings for trees derived from params (optimizer state, EMA).

  A leaf whose key path ends with a parameter's path takes that parameter's sharding when
  the shapes agree; factored statistics (Adafactor's row/column moments, one dim fewer)
  keep the sharding of the dims that remain. Everything else (counts, scalars) is replicated.
  """
  params = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(param_abstract):
    params[_path_key(path)] = leaf
  shard_by_path = {}
  for path, s in jax.tree_util.tree_leaves_with_path(
      param_shardings, is_leaf=lambda t: isinstance(t, NamedSharding)):
    shard_by_path[_path_key(path)] = s
  replicated = NamedSharding(mesh, P())

  def match(path, leaf):
    key = _path_key(path)
    for start in range(len(key)):
      suffix = key[start:]
      if suffix in params:
        p, s = params[suffix], shard_by_path[suffix]
        shape = getattr(leaf, "shape", ())
        if tuple(shape) == tuple(p.shape):
          return s
        spec = tuple(s.spec) + (None,) * (len(p.shape) - len(s.spec))
        if len(shape) == len(p.shape) - 1:
          for drop in (len(p.shape) - 1, len(p.shape) - 2):
            kept = [d for i, d in enumerate(p.shape) if i != drop]
            if tuple(kept) == tuple(shape):
              return NamedSharding(mesh, P(*[a for i, a in enumerate(spec) if i != drop]))
        return replicated
    return replicated
  return jax.tree_util.tree_map_with_path(match, abstract_tree)


def explain(abstract_tree, shardings) -> Iterable[str]:
  """Human-readable lines: path, shape, spec (for logs and golden tests)."""
  flat_s = {_path_key(p): s for p, s in jax.tree_util.tree_leaves_with_path(
      shardings, is_leaf=lambda t: isinstance(t, NamedSharding))}
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_tree):
    key = _path_key(path)
    yield f"{'/'.join(map(str, key))} {tuple(leaf.shape)} {flat_s[key].spec}"
