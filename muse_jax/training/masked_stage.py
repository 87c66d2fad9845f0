"""Shared training logic of the masked-token stages (base and super-resolution).

Per step: draw each example's mask ratio and masked positions, drop the text condition for a
fraction of examples (classifier-free guidance), predict the masked tokens, and minimise the
cross-entropy on masked positions only. Gradient accumulation splits the global batch into
microbatches and reproduces the full-batch gradient exactly (sums over a shared masked count).
"""
from __future__ import annotations

import abc
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from muse_jax.configs.checks import ConfigError, check_transformer
from muse_jax.data.batch import Feature
from muse_jax.data.token_sources import make_source
from muse_jax.models.functional import functionalize
from muse_jax.models.transformer import REMAT_POLICIES, TransformerConfig
from muse_jax.parallel import sharding as shd
from muse_jax.training import masking
from muse_jax.training.losses import masked_cross_entropy_sums
from muse_jax.training.optimizer import make_optimizer, schedule_length
from muse_jax.training.stage import Stage


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any  # {} when the EMA is off


class MaskedTokenStage(Stage):
  """Subclasses define the model, how it is called on a batch, and the batch format."""

  target_key = "tokens"
  model_config_class = TransformerConfig  # the typed `model` section the model is built from

  @classmethod
  def validate(cls, config):
    m = config.model
    check_transformer(m)
    try:
      cls.model_config_class.from_config(m)
    except (TypeError, ValueError) as e:
      raise ConfigError(str(e)) from e
    if m.remat not in REMAT_POLICIES:
      raise ConfigError(f"model.remat={m.remat!r}; choose one of {sorted(REMAT_POLICIES)}")
    if m.get("fp8_matmuls", False):
      raise ConfigError("model.fp8_matmuls is a sampling transform of trained weights "
                        "(muse_jax/models/fp8.py): set it in a pipeline stage's model "
                        "overrides, not in a training config")
    if not 0.0 <= config.objective.cfg_dropout < 1.0:
      raise ConfigError(f"objective.cfg_dropout={config.objective.cfg_dropout} must be in "
                        "[0, 1)")

  def __init__(self, config, mesh):
    super().__init__(config, mesh)
    self.fm, self._init_params = functionalize(lambda rngs: self.make_model(config, rngs))
    self.tx, self.schedule = make_optimizer(config.optimizer, schedule_length(config.train))
    self.accum = int(config.train.grad_accum)
    self.ema_decay = float(config.train.ema_decay)

  @abc.abstractmethod
  def apply_model(self, model, inputs, dropout_key):
    """logits [B, T, V] for the masked `inputs[target_key]`."""

  def features(self):
    """The image tokens and the text; a stage that reads more adds its own."""
    m = self.config.model
    return {
        "tokens": Feature((m.grid_size ** 2,), np.int32, ("act_batch", None)),
        "text": Feature((m.text_length, m.text_dim), np.float32, ("act_batch", None, None)),
        "text_len": Feature((), np.int32, ("act_batch",)),
    }

  def make_source(self, split, process_index, process_count):
    return make_source(self, split, process_index, process_count)

  # --- state -------------------------------------------------------------------------------
  def init_state(self, key):
    params = self._init_params(key)
    ema = jax.tree.map(jnp.copy, params) if self.ema_decay > 0 else {}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params), ema_params=ema)

  def param_shardings(self):
    return shd.tree_shardings(self.fm.abstract_params(), self.fm.logical_axes(), self.mesh,
                              self.rules)

  def state_shardings(self, abstract_state):
    p_sh = self.param_shardings()
    return TrainState(
        step=NamedSharding(self.mesh, P()),
        params=p_sh,
        opt_state=shd.derived_shardings(abstract_state.opt_state, abstract_state.params, p_sh,
                                        self.mesh),
        ema_params=p_sh if self.ema_decay > 0 else {})

  def params_for_export(self, state):
    return state.ema_params if self.ema_decay > 0 else state.params

  # --- steps -------------------------------------------------------------------------------
  def _prepare(self, batch, key, train: bool):
    k_mask, k_cfg = jax.random.split(key)
    tokens = batch[self.target_key]
    mask, ratio = masking.sample_mask(k_mask, tokens.shape[0], tokens.shape[1])
    inputs = dict(batch)
    inputs["mask"] = mask
    if train:
      inputs["text_len"] = masking.drop_condition(k_cfg, batch["text_len"],
                                                  self.config.objective.cfg_dropout)
    return inputs, ratio

  def _loss(self, params, inputs, count, dropout_key):
    model = self.fm.bind(params)
    masked = dict(inputs)
    masked[self.target_key] = jnp.where(inputs["mask"], model.mask_id, inputs[self.target_key])
    logits = self.apply_model(model, masked, dropout_key)
    nll, correct = masked_cross_entropy_sums(logits, inputs[self.target_key], inputs["mask"],
                                             self.config.objective.label_smoothing)
    return nll / count, correct

  def _dropout_key(self, key):
    return key if float(self.config.model.dropout) > 0 else None

  def train_step(self, state, batch, key):
    k_prep, k_drop = jax.random.split(jax.random.fold_in(key, 0))
    inputs, ratio = self._prepare(batch, k_prep, train=True)
    count = jnp.maximum(jnp.sum(inputs["mask"]), 1).astype(jnp.float32)
    grad_fn = jax.value_and_grad(self._loss, has_aux=True)
    if self.accum == 1:
      (loss, correct), grads = grad_fn(state.params, inputs, count, self._dropout_key(k_drop))
    else:
      a = self.accum
      b = inputs[self.target_key].shape[0]
      if b % a:
        raise ValueError(f"train.batch_size={b} is not divisible by train.grad_accum={a}")
      # Interleave rows so every microbatch stays spread over all data-parallel devices.
      micro = jax.tree.map(lambda x: x.reshape(b // a, a, *x.shape[1:]).swapaxes(0, 1), inputs)
      keys = jax.random.split(k_drop, a)

      def body(carry, xs):
        g_acc, l_acc, c_acc = carry
        mb, k = xs
        (l, c), g = grad_fn(state.params, mb, count, self._dropout_key(k))
        g_acc = jax.tree.map(lambda x, y: x + y.astype(jnp.float32), g_acc, g)
        return (g_acc, l_acc + l, c_acc + c), None

      zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
      (grads, loss, correct), _ = jax.lax.scan(body, (zeros, 0.0, 0.0), (micro, keys))
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if self.ema_decay > 0:
      d = self.ema_decay
      ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, params)
    metrics = dict(loss=loss, accuracy=correct / count, grad_norm=optax.global_norm(grads),
                   learning_rate=self.schedule(state.step), mask_ratio=jnp.mean(ratio))
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                           ema_params=ema)
    return new_state, metrics

  def eval_step(self, state, batch, key):
    inputs, _ = self._prepare(batch, key, train=False)
    count = jnp.maximum(jnp.sum(inputs["mask"]), 1).astype(jnp.float32)
    loss, correct = self._loss(self.params_for_export(state), inputs, count, None)
    return dict(loss=loss, accuracy=correct / count)
