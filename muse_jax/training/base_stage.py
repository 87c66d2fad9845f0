"""Stage `base`: the text-conditioned masked transformer on low-resolution image tokens."""
from __future__ import annotations

from muse_jax.configs import common
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

  def flops_per_example(self, attention_only=False):
    return base_transformer_train_flops(self.config.model, attention_only)
