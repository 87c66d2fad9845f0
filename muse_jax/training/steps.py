"""The jitted step functions of a run: a stage on a mesh, the shardings of its state and batch,
and `train_step`/`eval_step` under `jax.jit` with explicit in/out shardings and donation.

The training loop (loop.py) runs them on the local devices; ahead-of-time compilation
(aot.py) lowers the same train step on a TPU topology's devices, so both compile one program.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from muse_jax.parallel import sharding as shd
from muse_jax.training.registry import get_stage


class StepFunctions:
  """The stage of `config` on `mesh`, its abstract state, shardings and jitted steps."""

  def __init__(self, config, mesh: Mesh):
    self.config, self.mesh = config, mesh
    self.stage = get_stage(config.stage)(config, mesh)
    self.rules = self.stage.rules
    key = jax.random.key(config.seed)
    self.init_key, self.step_key, self.eval_key = jax.random.split(key, 3)
    self.abstract_state = jax.eval_shape(self.stage.init_state, self.init_key)
    self.state_sh = self.stage.state_shardings(self.abstract_state)
    b = int(config.train.batch_size)
    self.batch_sh = {k: shd.named_sharding(f.axes, mesh, self.rules, (b,) + f.shape)
                     for k, f in self.stage.features().items()}
    repl = NamedSharding(mesh, P())
    self.train_step_fn = jax.jit(self._traced(self.stage.train_step, self.step_key),
                                 in_shardings=(self.state_sh, self.batch_sh, repl),
                                 out_shardings=(self.state_sh, repl), donate_argnums=(0,))
    self.eval_step_fn = jax.jit(self._traced(self.stage.eval_step, self.eval_key),
                                in_shardings=(self.state_sh, self.batch_sh, repl),
                                out_shardings=repl)

  def _traced(self, fn, base_key):
    def wrapped(state, batch, step):
      with shd.activation_rules(self.mesh, self.rules):
        return fn(state, batch, jax.random.fold_in(base_key, step))
    return wrapped

  def abstract_with_shardings(self):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.abstract_state, self.state_sh)

  def abstract_batch(self):
    b = int(self.config.train.batch_size)
    return {k: jax.ShapeDtypeStruct((b,) + f.shape, f.dtype, sharding=self.batch_sh[k])
            for k, f in self.stage.features().items()}

  def lower_train_step(self) -> jax.stages.Lowered:
    return self.train_step_fn.lower(self.abstract_with_shardings(), self.abstract_batch(),
                                    np.int32(0))

  def compile(self) -> jax.stages.Compiled:
    """Ahead-of-time compile of the train step (catches OOMs before any data is read)."""
    return self.lower_train_step().compile()
