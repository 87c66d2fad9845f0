"""Stage `base`: the text-conditioned masked transformer on low-resolution image tokens."""
from __future__ import annotations

import numpy as np

from muse_jax.configs import common
from muse_jax.data.batch import Feature
from muse_jax.data.token_sources import make_source
from muse_jax.models.transformer import MaskedTransformer, TransformerConfig
from muse_jax.training.flops import base_transformer_train_flops
from muse_jax.training.masked_stage import MaskedTokenStage


class BaseStage(MaskedTokenStage):
  name = "base"

  @classmethod
  def reference_config(cls):
    return common.get_config("base")

  @staticmethod
  def make_model(config, rngs):
    return MaskedTransformer(TransformerConfig.from_config(config.model), rngs=rngs)

  def apply_model(self, model, inputs, dropout_key):
    return model(inputs["tokens"], inputs["text"], inputs["text_len"], dropout_key=dropout_key)

  def features(self):
    m = self.config.model
    return {
        "tokens": Feature((m.grid_size ** 2,), np.int32, ("act_batch", None)),
        "text": Feature((m.text_length, m.text_dim), np.float32, ("act_batch", None, None)),
        "text_len": Feature((), np.int32, ("act_batch",)),
    }

  def make_source(self, split, process_index, process_count):
    return make_source(self, split, process_index, process_count)

  def flops_per_example(self):
    return base_transformer_train_flops(self.config.model)
