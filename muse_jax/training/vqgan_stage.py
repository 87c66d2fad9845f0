"""Stage `vqgan`: train the image tokenizer (generator) against a discriminator.

One train step (pure; `muse_jax.training.loop` jits it with explicit shardings):
  1. generator: x -> encoder -> quantizer (straight-through) -> decoder -> x_hat;
     L_G = rec + perceptual (LPIPS, if weights are given) + codebook/commitment
           + [step >= disc_start] * lambda * adversarial(D(x_hat))       (vqgan_losses.py)
     Adam(W) update of the generator params (config.optimizer).
  2. discriminator (only from `loss.disc_start_step` on; before that its params and optimizer
     state do not change, and when that step is beyond `train.num_steps` the compiled step
     holds no discriminator at all): L_D = GAN loss on D(x), D(sg(x_hat)) + lecam_weight * LeCAM;
     Adam(W) update with config.disc_optimizer.
  3. codebook usage: EMA of per-code frequencies; every `quantizer.restart_every` steps dead
     codes are re-initialised from this batch's encoder outputs (muse_jax.models.quantizer).

Decoder fine-tuning (Muse Sec. 2.5, `finetune.decoder_only`): only `post_quant_conv` and the
decoder train; the encoder and codebook come from `finetune.init_from` (a finished vqgan workdir
or a diffusers VQModel) and are frozen (no gradient, no optimizer state, no restarts).

The frozen VGG16/LPIPS weights live in the train state (`lpips`, replicated, never updated) so
the step stays a pure function of its arguments; they are loaded once from
`loss.perceptual_weights`. When that path is empty the perceptual loss is off and the stage
says so when it is built.
"""
from __future__ import annotations

import functools
import logging
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from muse_jax.configs import common_vqgan
from muse_jax.configs.checks import ConfigError
from muse_jax.data.batch import Feature
from muse_jax.data.images import KINDS as IMAGE_KINDS, ImageSource
from muse_jax.data.shapes import dataset as shapes
from muse_jax.encoders.vq_tokenizer import load_vq_params
from muse_jax.models import quantizer as Q, vqgan as V
from muse_jax.models.discriminator import Discriminator, DiscriminatorConfig
from muse_jax.models.functional import functionalize
from muse_jax.models.lpips import lpips
from muse_jax.models.vqgan import from_model_range, to_model_range
from muse_jax.parallel import sharding as shd
from muse_jax.training import vqgan_losses as VL
from muse_jax.training.optimizer import make_optimizer, schedule_length
from muse_jax.training.stage import Stage
from muse_jax.weights.vgg_lpips import load_lpips_params

log = logging.getLogger(__name__)


@flax.struct.dataclass
class VQGANState:
  step: jax.Array
  params: Any           # generator (tokenizer) params
  opt_state: Any
  disc_params: Any
  disc_opt_state: Any
  lecam_ema: Any        # {"real", "fake"} scalars
  usage_ema: jax.Array  # [codebook_size] EMA of code frequencies
  lpips: Any            # frozen VGG16 + LPIPS weights ({} when the perceptual loss is off)


class VQGANStage(Stage):
  name = "vqgan"

  @classmethod
  def reference_config(cls):
    return common_vqgan.get_config()

  @classmethod
  def validate(cls, config):
    try:
      model_cfg = V.VQGANConfig.from_config(config.model)
      disc_cfg = DiscriminatorConfig.from_config(config.discriminator)
      model_cfg.token_grid(int(config.data.image_size))
    except ValueError as e:
      raise ConfigError(str(e)) from e
    image_size = int(config.data.image_size)
    if disc_cfg.image_size != image_size:
      raise ConfigError(f"discriminator.image_size={disc_cfg.image_size} differs from "
                        f"data.image_size={image_size}; set them equal")
    lc = config.loss
    if lc.reconstruction not in VL.RECONSTRUCTION_KINDS:
      raise ConfigError(f"loss.reconstruction must be one of {VL.RECONSTRUCTION_KINDS}")
    if lc.gan_loss not in VL.GAN_KINDS:
      raise ConfigError(f"loss.gan_loss must be one of {VL.GAN_KINDS}")
    if lc.adversarial_weight_mode not in ("fixed", "adaptive"):
      raise ConfigError("loss.adversarial_weight_mode must be fixed or adaptive")
    if config.data.source not in IMAGE_KINDS:
      raise ConfigError(f"data.source={config.data.source!r}; the vqgan stage reads "
                        f"{', '.join(IMAGE_KINDS)}")
    if config.data.source == "folder" and not config.data.path:
      raise ConfigError("data.source=folder needs data.path=FOLDER (its images, any depth)")
    if config.finetune.decoder_only and not config.finetune.init_from:
      raise ConfigError("finetune.decoder_only=True needs finetune.init_from (a finished "
                        "tokenizer workdir or diffusers VQModel)")

  @staticmethod
  def make_model(config, rngs):
    return V.VQGAN(V.VQGANConfig.from_config(config.model), rngs=rngs)

  def __init__(self, config, mesh):
    super().__init__(config, mesh)
    self.model_cfg = V.VQGANConfig.from_config(config.model)
    self.disc_cfg = DiscriminatorConfig.from_config(config.discriminator)
    self.image_size = int(config.data.image_size)
    lc = config.loss
    self.fm, self._init_g = functionalize(lambda r: V.VQGAN(self.model_cfg, rngs=r))
    self.dm, self._init_d = functionalize(lambda r: Discriminator(self.disc_cfg, rngs=r))
    n = int(config.train.num_steps)
    # disc_start_step >= num_steps: the GAN never starts, so the step is compiled without the
    # discriminator (same results: both branches would be the skipped ones).
    self.gan_possible = int(lc.disc_start_step) < n
    self.decoder_only = bool(config.finetune.decoder_only)
    tx, self.schedule = make_optimizer(config.optimizer, schedule_length(config.train))
    if self.decoder_only:
      labels = {k: jax.tree.map(lambda _: "train" if k in V.decoder_param_keys() else "frozen",
                                v) for k, v in self.fm.abstract_params().items()}
      tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    self.tx = tx
    self.dtx, self.disc_schedule = make_optimizer(config.disc_optimizer,
                                                  schedule_length(config.train))
    self._finished = None
    if config.finetune.init_from:
      self._finished = load_vq_params(config.finetune.init_from, self.model_cfg,
                                      self.decoder_only)
    self._lpips = None
    if lc.perceptual_weight > 0 and lc.perceptual_weights:
      self._lpips = load_lpips_params(lc.perceptual_weights)
    elif lc.perceptual_weight > 0:
      msg = ("perceptual loss is OFF: loss.perceptual_weights is empty. Set it to a "
             ".safetensors file with VGG16 `features.*` and LPIPS `lin*` keys to train with "
             "LPIPS; build one with `python tools/pth_to_safetensors.py vgg16-397923af.pth "
             "vgg.pth lpips_vgg16.safetensors` (where to get both files: "
             "muse_jax/weights/vgg_lpips.py).")
      log.warning(msg)  # one stderr line: absl's handler under the CLI, else logging's lastResort
    # The progress line's metrics (all go to metrics.jsonl and TensorBoard): the losses this
    # run trains with, and reconstruction quality and live codes as its health.
    self.console_metrics = (
        "loss", "rec_loss", *(("perceptual_loss",) if self.perceptual_on else ()),
        *(("g_adv_loss", "d_loss") if self.gan_possible else ()),
        "psnr", "codebook_used_fraction_ema")

  @property
  def perceptual_on(self) -> bool:
    return self._lpips is not None

  # --- state ---------------------------------------------------------------------------------
  def init_state(self, key):
    kg, kd = jax.random.split(key)
    return self.state_from_params(self._init_g(kg), self._init_d(kd))

  def state_from_params(self, params, disc):
    """A step-0 state around given generator/discriminator params (fresh optimizers)."""
    if self._finished is not None:
      finished = jax.tree.map(jnp.asarray, self._finished)
      if self.decoder_only:
        params = V.finetune_decoder_params(finished, params)
      else:
        params = finished
    k = self.model_cfg.codebook_size
    lp = jax.tree.map(jnp.asarray, self._lpips) if self._lpips is not None else {}
    return VQGANState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params), disc_params=disc,
                      disc_opt_state=self.dtx.init(disc), lecam_ema=VL.init_lecam_ema(),
                      usage_ema=jnp.full((k,), 1.0 / k, jnp.float32), lpips=lp)

  def state_shardings(self, abstract_state):
    repl = NamedSharding(self.mesh, P())
    g_sh = shd.tree_shardings(self.fm.abstract_params(), self.fm.logical_axes(), self.mesh,
                              self.rules)
    d_sh = shd.tree_shardings(self.dm.abstract_params(), self.dm.logical_axes(), self.mesh,
                              self.rules)
    return VQGANState(
        step=repl, params=g_sh,
        opt_state=shd.derived_shardings(abstract_state.opt_state, abstract_state.params, g_sh,
                                        self.mesh),
        disc_params=d_sh,
        disc_opt_state=shd.derived_shardings(abstract_state.disc_opt_state,
                                             abstract_state.disc_params, d_sh, self.mesh),
        lecam_ema=jax.tree.map(lambda _: repl, abstract_state.lecam_ema),
        usage_ema=repl, lpips=jax.tree.map(lambda _: repl, abstract_state.lpips))

  def features(self):
    s = self.image_size
    return {"images": Feature((s, s, self.model_cfg.in_channels), np.uint8,
                              ("act_batch", None, None, None))}

  def make_source(self, split, process_index, process_count):
    cfg = self.config
    root = cfg.data.path if split == "train" else cfg.data.eval_path or cfg.data.path
    return ImageSource(cfg.data.source, self.image_size, seed=cfg.seed, split=split,
                       global_batch=cfg.train.batch_size, process_index=process_index,
                       process_count=process_count,
                       num_batches=cfg.train.eval_batches if split == "eval" else None,
                       # eval rewinds to its first batch at every evaluation: drawn serially
                       num_workers=int(cfg.data.num_workers) if split == "train" else 0,
                       scenes=shapes.scene_options(cfg.data.shapes), root=root)

  # --- losses --------------------------------------------------------------------------------
  def _perceptual(self, lp, x, x_hat):
    if not self.perceptual_on:
      return jnp.zeros((), jnp.float32)
    return jnp.mean(lpips(lp, x, x_hat, pixel_range=self.model_cfg.pixel_range,
                          dtype=jnp.dtype(self.config.loss.perceptual_dtype)))

  def _generator_loss(self, params, disc_params, lp, x, gan_on):
    lc = self.config.loss
    model = self.fm.bind(params)
    disc = self.dm.bind(disc_params)
    z = model.encode_latents(x)
    if self.decoder_only:
      z = jax.lax.stop_gradient(z)
    q = model.quantize(z)
    feats = model.decoder.features(model.post_quant_conv(q.quantized))
    conv_out = model.decoder.conv_out
    x_hat = model.decoder.unpatchify(conv_out(feats)).astype(jnp.float32)
    rec = VL.reconstruction_loss(x, x_hat, lc.reconstruction)
    perc = self._perceptual(lp, x, x_hat)
    rec_total = lc.reconstruction_weight * rec + lc.perceptual_weight * perc

    def adversarial(_):
      g_adv = VL.generator_adversarial_loss(disc(x_hat), lc.gan_loss)
      if lc.adversarial_weight_mode == "fixed":
        return g_adv, jnp.asarray(lc.adversarial_weight, jnp.float32)
      # Adaptive: gradient-norm ratio at the decoder's output conv kernel.
      f = jax.lax.stop_gradient(feats)
      kern = jax.lax.stop_gradient(conv_out.kernel[...])

      def out(k):
        y = jax.lax.conv_general_dilated(
            f, k.astype(f.dtype), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = y + conv_out.bias[...].astype(y.dtype)
        return model.decoder.unpatchify(y).astype(jnp.float32)
      g_rec = jax.grad(lambda k: lc.reconstruction_weight * VL.reconstruction_loss(
          x, out(k), lc.reconstruction) + lc.perceptual_weight * self._perceptual(
              lp, x, out(k)))(kern)
      g_gan = jax.grad(lambda k: VL.generator_adversarial_loss(disc(out(k)), lc.gan_loss))(kern)
      return g_adv, lc.adversarial_weight * VL.adaptive_weight(g_rec, g_gan)

    zero = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    if self.gan_possible:
      g_adv, adv_w = jax.lax.cond(gan_on > 0, adversarial, lambda _: zero, None)
    else:  # the GAN never starts in this run: no discriminator in the compiled step
      g_adv, adv_w = zero
    q_loss = (jnp.zeros((), jnp.float32) if self.decoder_only
              else lc.codebook_weight * (q.codebook_loss + q.commitment_loss))
    total = rec_total + q_loss + gan_on * adv_w * g_adv
    metrics = dict(rec_loss=rec, perceptual_loss=perc, g_adv_loss=g_adv, adv_weight=adv_w,
                   codebook_loss=q.codebook_loss, commitment_loss=q.commitment_loss)
    return total, (x_hat, z, q.counts, metrics)

  # --- steps ---------------------------------------------------------------------------------
  def train_step(self, state, batch, key):
    lc, qc = self.config.loss, self.config.quantizer
    x = to_model_range(batch["images"], self.model_cfg.pixel_range)
    gan_on = VL.gan_active(state.step, int(lc.disc_start_step))
    (g_loss, (x_hat, z, counts, metrics)), grads = jax.value_and_grad(
        self._generator_loss, has_aux=True)(state.params, state.disc_params, state.lpips, x,
                                            gan_on)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    # Codebook usage and dead-code restarts.
    k = self.model_cfg.codebook_size
    usage = Q.update_usage_ema(state.usage_ema, counts, float(qc.usage_ema_decay))
    n_restart = jnp.zeros((), jnp.int32)
    every = int(qc.restart_every)
    if every > 0 and not self.decoder_only:
      cb = params["quantize"]["embedding"]
      new_cb, new_usage, n = Q.restart_dead_codes(
          cb, usage, jax.lax.stop_gradient(z), jax.random.fold_in(key, 1),
          float(qc.restart_threshold))
      do = ((state.step + 1) % every) == 0
      params = {**params, "quantize": {**params["quantize"],
                                       "embedding": jnp.where(do, new_cb, cb)}}
      usage = jnp.where(do, new_usage, usage)
      n_restart = jnp.where(do, n, 0)

    # Discriminator (frozen until the GAN starts).
    fake = jax.lax.stop_gradient(x_hat)

    def d_update(_):
      def d_loss_fn(dp):
        disc = self.dm.bind(dp)
        real, fk = disc(x), disc(fake)  # separate calls: minibatch-stddev groups stay pure
        return VL.discriminator_objective(
            real, fk, state.lecam_ema, step=state.step, kind=lc.gan_loss,
            start_step=int(lc.disc_start_step), lecam_weight=float(lc.lecam_weight),
            lecam_decay=float(lc.lecam_ema_decay))
      (d_loss, (ema, dm)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
          state.disc_params)
      d_upd, d_opt = self.dtx.update(d_grads, state.disc_opt_state, state.disc_params)
      return optax.apply_updates(state.disc_params, d_upd), d_opt, ema, dm

    def d_skip(_):
      zero = jnp.zeros((), jnp.float32)
      dm = {k: zero for k in ("d_loss", "d_lecam", "d_real_logit", "d_fake_logit",
                              "lecam_ema_real", "lecam_ema_fake")}
      return state.disc_params, state.disc_opt_state, state.lecam_ema, dm

    if self.gan_possible:
      disc_params, disc_opt, lecam_ema, d_metrics = jax.lax.cond(gan_on > 0, d_update, d_skip,
                                                                 None)
    else:
      disc_params, disc_opt, lecam_ema, d_metrics = d_skip(None)
    usage_m = Q.usage_metrics(counts)
    metrics = dict(
        loss=g_loss, **metrics, **d_metrics, **usage_m,
        codebook_used_fraction_ema=jnp.mean(
            (usage >= float(qc.restart_threshold) / k).astype(jnp.float32)),
        codes_restarted=n_restart.astype(jnp.float32),
        psnr=VL.psnr(x, x_hat, 2.0 if self.model_cfg.pixel_range == "-1_1" else 1.0),
        gan_active=gan_on, grad_norm=optax.global_norm(grads),
        learning_rate=self.schedule(state.step),
        disc_learning_rate=self.disc_schedule(state.step))
    new_state = VQGANState(step=state.step + 1, params=params, opt_state=opt_state,
                           disc_params=disc_params, disc_opt_state=disc_opt, lecam_ema=lecam_ema,
                           usage_ema=usage, lpips=state.lpips)
    return new_state, metrics

  def eval_step(self, state, batch, key):
    del key
    x = to_model_range(batch["images"], self.model_cfg.pixel_range)
    model = self.fm.bind(state.params)
    x_hat, q = model(x)
    m = dict(loss=VL.reconstruction_loss(x, x_hat, self.config.loss.reconstruction),
             psnr=VL.psnr(x, x_hat, 2.0 if self.model_cfg.pixel_range == "-1_1" else 1.0),
             **Q.usage_metrics(q.counts))
    if self.perceptual_on:
      m["perceptual_loss"] = self._perceptual(state.lpips, x, x_hat)
    return m

  def reconstruction_grid(self, state, images, n: int | None = None) -> np.ndarray:
    """An [H, 2W, 3] image in [0, 1]: the first `n` (`train.image_grid_size`) of `images`
    (left column) beside their reconstructions, for TensorBoard (`Reporter.images`).
    `images` are uint8 or [0, 1] floats [b, S, S, 3]: numpy, or a global jax.Array such as
    the train batch. One jitted program over the params as they are sharded, so in a
    multi-process run every process must call it with the same global `images`; each gets
    the whole grid."""
    n = min(n or int(self.config.train.image_grid_size), images.shape[0])
    shown, rec = self._reconstruct(state.params, images, n)
    pr = self.model_cfg.pixel_range
    # The originals through the model's input range op by op, on this process's first device:
    # fused under jit, the division by 255 may round differently in the last bit.
    orig = np.asarray(from_model_range(to_model_range(jnp.asarray(np.asarray(shown)), pr), pr))
    rows = [np.concatenate([o, r], axis=1) for o, r in zip(orig, np.asarray(rec))]
    return np.concatenate(rows, axis=0)

  @functools.cached_property
  def _reconstruct(self):
    """(params, images, n) -> (the first n images, their reconstructions in [0, 1]),
    replicated so that every process can read them. Jitted over the params as they are sharded
    rather than gathering them onto each host: XLA moves only what the program needs."""
    pr = self.model_cfg.pixel_range

    def reconstruct(params, images, n):
      x_hat, _ = self.fm.bind(params)(to_model_range(images[:n], pr))
      return images[:n], jnp.clip(from_model_range(x_hat, pr), 0, 1)
    return jax.jit(reconstruct, static_argnums=2, out_shardings=NamedSharding(self.mesh, P()))

  def images(self, state, batch):
    return {"reconstructions": self.reconstruction_grid(state, batch["images"])}

  def params_for_export(self, state):
    return state.params
