"""Stage `sr`: the super-resolution masked transformer (Muse Sec. 2.4).

The objective is the base stage's (`MaskedTokenStage`): mask a cosine-distributed fraction of
the high-res `tokens`, drop the text for `objective.cfg_dropout` of the examples, and minimise
the cross-entropy on masked positions. The low-res tokens `tokens_lo` are never masked and are
never dropped: the null condition removes only the text (see muse_jax/models/superres.py).

Batch format (per example): tokens [grid_size**2] int32 (high-res, the target),
tokens_lo [lowres_grid_size**2] int32, text [text_length, text_dim] float32, text_len [] int32.
"""
from __future__ import annotations

import numpy as np

from muse_jax.configs import common_sr
from muse_jax.configs.checks import ConfigError
from muse_jax.data.batch import Feature
from muse_jax.models.superres import SuperResConfig, SuperResTransformer
from muse_jax.training.flops import block_forward_flops
from muse_jax.training.masked_stage import MaskedTokenStage


def check_superres(m) -> None:
  """SR-specific checks of `config.model` (beyond `checks.check_transformer`)."""
  for name in ("lowres_grid_size", "lowres_num_layers"):
    if name not in m:
      raise ConfigError(f"model.{name} is missing; an sr config starts from "
                        "muse_jax/configs/common_sr.get_config()")
    v = m[name]
    if not isinstance(v, int) or v <= 0:
      raise ConfigError(f"model.{name}={v!r} must be a positive integer")
  if m.lowres_grid_size > m.grid_size:
    raise ConfigError(f"model.lowres_grid_size={m.lowres_grid_size} exceeds "
                      f"model.grid_size={m.grid_size}; the SR model upsamples")
  if m.get("lowres_skip", False) and m.grid_size % m.lowres_grid_size:
    raise ConfigError(f"model.lowres_skip needs model.grid_size={m.grid_size} to be a multiple "
                      f"of model.lowres_grid_size={m.lowres_grid_size}")
  kv = m.lowres_grid_size ** 2 + m.text_length
  if m.attention == "cudnn" and kv % 64:
    raise ConfigError(f"cross-attention KV length lowres_grid_size**2 + text_length = {kv}: "
                      "cuDNN flash attention needs a multiple of 64; or use "
                      "model.attention=xla")


def sr_transformer_train_flops(cfg, attention_only: bool = False) -> float:
  """Forward+backward FLOPs of one example of the SR model (`config.model`); with
  `attention_only`, those of its attentions' score and value products alone."""
  t_hi, t_lo, s = cfg.grid_size ** 2, cfg.lowres_grid_size ** 2, cfg.text_length
  fwd = cfg.lowres_num_layers * block_forward_flops(cfg, t_lo, None, attention_only)  # encoder
  fwd += cfg.num_layers * block_forward_flops(cfg, t_hi, t_lo + s, attention_only)     # decoder
  if not attention_only:
    fwd += 2 * s * cfg.text_dim * cfg.hidden_size                       # text projection
    fwd += 2 * t_hi * cfg.hidden_size * cfg.codebook_size               # logits
  return 3.0 * fwd


class SuperResStage(MaskedTokenStage):
  name = "sr"
  model_config_class = SuperResConfig

  @classmethod
  def reference_config(cls):
    return common_sr.get_config()

  @classmethod
  def validate(cls, config):
    check_superres(config.model)
    super().validate(config)

  @staticmethod
  def make_model(config, rngs):
    return SuperResTransformer(SuperResConfig.from_config(config.model), rngs=rngs)

  def apply_model(self, model, inputs, dropout_key):
    return model(inputs["tokens"], inputs["tokens_lo"], inputs["text"], inputs["text_len"],
                 dropout_key=dropout_key)

  def features(self):
    m = self.config.model
    lowres = Feature((m.lowres_grid_size ** 2,), np.int32, ("act_batch", None))
    return {**super().features(), "tokens_lo": lowres}

  def flops_per_example(self, attention_only=False):
    return sr_transformer_train_flops(self.config.model, attention_only)
