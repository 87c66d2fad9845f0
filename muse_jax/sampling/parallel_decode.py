"""MaskGIT/Muse parallel decoding with classifier-free guidance, as one jit-able loop.

Decoding starts from a token grid in which the tokens to generate hold `mask_id`. Each of the
`num_steps` steps (one `lax.fori_loop` iteration, no host syncs):

  1. runs the model once. With guidance (scale != 0, a static choice) that is ONE forward on
     2B rows: each example's conditional row followed by its unconditional row (the batch
     concatenation of cond and uncond, interleaved per example so that a batch-sharded input
     needs no cross-device traffic). The guided logits are

       l_g = (1 + t_i) * l_c - t_i * l_u                                    (Muse Sec. 2.7)

     where l_u comes from `uncond`: the null condition, or a negative prompt's embeddings.
     Guidance schedules (see `guidance_per_step`):
       'linear':   t_i = scale * i / (S - 1)   (0 at the first step, `scale` at the last; S = 1
                                                gives `scale`)
       'constant': t_i = scale
     With scale == 0 the unconditional half is never computed and `uncond` is ignored.
  2. optionally keeps only the top-k guided logits per position (`largest_k`);
  3. samples a token at every masked position from softmax(l_g / tau_i) with the Gumbel-max
     trick (tau_i = 0 means argmax; a temperature that is 0 at every step skips the noise).
     tau_i is `temperature`, or a linear ramp from `temperature` to `temperature_end` with the
     same i / (S - 1) fraction as guidance;
  4. scores each sampled token by confidence = log p(token) + c_i * Gumbel noise, where
     log p is under the full softmax(l_g) (no temperature, no top-k filtering) and
     c_i = choice_temperature * (1 - (i + 1) / S) anneals linearly to 0 (MaskGIT). Known and
     already revealed tokens get +inf confidence;
  5. keeps the n_i lowest-confidence positions masked, n_i from
     `mask_schedule.num_masked_after_steps` (exact counts; ties go to the lower position index),
     and writes the sampled tokens everywhere else.

Tokens given at the start (`init_tokens != mask_id`, or `known_mask`) never change, and no
`mask_id` remains after the last step.

The model is seen only through a pure `logits_fn(tokens, cond) -> logits`: tokens int32 [B, T]
(masked positions hold `mask_id`), cond any pytree whose leaves have leading batch dim B, logits
[B, T, V] with V = codebook size <= mask_id (the mask token is never predicted).

Jitting: `decode` is traceable; call it inside your own `jax.jit` and close `logits_fn` over
parameters that are arguments of that jitted function, so that weights are not baked into the
program as constants:

  @functools.partial(jax.jit, static_argnames=("num_steps", "guidance_scale"))
  def generate(params, tokens, cond, uncond, key, num_steps, guidance_scale):
    fn = lambda t, c: model_apply(params, t, c)
    return decode(fn, tokens, cond, uncond, key, mask_id=8192, num_steps=num_steps,
                  guidance_scale=guidance_scale)

Every argument after `key` must be static (Python numbers/strings). Inputs sharded over the
batch axis (e.g. `NamedSharding(mesh, P('data'))`) stay sharded through the loop; with the
default threefry keys the random streams are the same sharded or not
(jax_threefry_partitionable). Randomness: step i uses jax.random.split(key, S)[i] and draws one
standard Gumbel array [B, T, n + 1] (n = top_k or V; n = 0 when greedy): [..., :n] samples the
tokens, [..., n] perturbs the confidences. Keys of the 'rbg'/'unsafe_rbg' implementations are
accepted and are cheaper on accelerators.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from muse_jax.sampling import mask_schedule

LogitsFn = Callable[[jax.Array, Any], jax.Array]

GUIDANCE_SCHEDULES = ("linear", "constant")
DEFAULT_CHOICE_TEMPERATURE = 4.5


# --------------------------------------------------------------------------------------------
# Per-step scalars (host-side, static: computed once and embedded as constants).
# --------------------------------------------------------------------------------------------


def _ramp_fraction(num_steps: int) -> np.ndarray:
  """i / (S - 1) for i = 0..S-1 (all ones when S == 1)."""
  if num_steps == 1:
    return np.ones((1,), np.float64)
  return np.arange(num_steps, dtype=np.float64) / (num_steps - 1)


def guidance_per_step(num_steps: int, guidance_scale: float,
                      guidance_schedule: str = "linear") -> np.ndarray:
  """Guidance t_i for each step, float32 [S] (formulas in the module docstring)."""
  if guidance_schedule == "linear":
    values = guidance_scale * _ramp_fraction(num_steps)
  elif guidance_schedule == "constant":
    values = np.full((num_steps,), guidance_scale, np.float64)
  else:
    raise ValueError(f"guidance_schedule={guidance_schedule!r}; use one of {GUIDANCE_SCHEDULES}")
  return values.astype(np.float32)


def temperature_per_step(num_steps: int, temperature: float,
                         temperature_end: Optional[float] = None) -> np.ndarray:
  """Sampling temperature tau_i: constant, or linear from `temperature` to `temperature_end`."""
  if temperature < 0 or (temperature_end is not None and temperature_end < 0):
    raise ValueError(f"temperature={temperature}, temperature_end={temperature_end}: "
                     "temperatures must be >= 0 (0 means argmax)")
  if temperature_end is None:
    return np.full((num_steps,), temperature, np.float32)
  frac = _ramp_fraction(num_steps)
  return (temperature + (temperature_end - temperature) * frac).astype(np.float32)


def choice_temperature_per_step(num_steps: int, choice_temperature: float) -> np.ndarray:
  """Gumbel scale c_i = choice_temperature * (1 - (i + 1) / S) for the confidence ranking."""
  progress = (np.arange(num_steps, dtype=np.float64) + 1.0) / num_steps
  return (choice_temperature * (1.0 - progress)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Building blocks shared with editing.
# --------------------------------------------------------------------------------------------


def guided_logits(cond_logits: jax.Array, uncond_logits: jax.Array, t) -> jax.Array:
  """Muse CFG: (1 + t) * l_c - t * l_u."""
  return (1.0 + t) * cond_logits - t * uncond_logits


def pair_conditions(cond: Any, uncond: Any) -> Any:
  """Interleaves cond and uncond along the batch: rows (c_0, u_0, c_1, u_1, ...), [2B, ...].

  Both pytrees must have the same structure and leaf shapes (pad a null or negative prompt to
  the same text length as the prompt).
  """
  cond_def = jax.tree.structure(cond)
  uncond_def = jax.tree.structure(uncond)
  if cond_def != uncond_def:
    raise ValueError(f"cond and uncond must have the same structure; got {cond_def} and "
                     f"{uncond_def}")

  def pair(c, u):
    c, u = jnp.asarray(c), jnp.asarray(u)
    if c.shape != u.shape:
      raise ValueError(f"cond leaf shape {c.shape} != uncond leaf shape {u.shape}; pad the "
                       "unconditional / negative prompt to the same shape as the prompt")
    u = u.astype(c.dtype)
    return jnp.stack([c, u], axis=1).reshape((2 * c.shape[0],) + c.shape[1:])

  return jax.tree.map(pair, cond, uncond)


def model_conditions(cond: Any, uncond: Any, use_cfg: bool,
                     prepare_cond: Optional[Callable[[Any], Any]] = None):
  """(cond, paired_cond) as `model_logits` takes them, `prepare_cond` applied to the one used."""
  if not use_cfg:
    return (cond if prepare_cond is None else prepare_cond(cond)), None
  paired = pair_conditions(cond, uncond)
  return cond, (paired if prepare_cond is None else prepare_cond(paired))


def model_logits(logits_fn: LogitsFn, tokens: jax.Array, cond: Any, paired_cond: Any, t, *,
                 use_cfg: bool, mask_id: int) -> jax.Array:
  """One model call: cond-only logits, or guided logits from one 2B forward. float32 [B, T, V].

  Args:
    logits_fn: the model (see module docstring).
    tokens: int32 [B, T].
    cond: the condition, used when `use_cfg` is False.
    paired_cond: `pair_conditions(cond, uncond)`, used when `use_cfg` is True.
    t: guidance for this step (scalar).
    use_cfg: static; False skips the unconditional branch entirely.
    mask_id: the mask token id, to check the vocabulary size.
  """
  if use_cfg:
    batch, length = tokens.shape
    logits = logits_fn(jnp.repeat(tokens, 2, axis=0), paired_cond)
    _check_logits(logits, (2 * batch, length), mask_id)
    logits = logits.astype(jnp.float32).reshape((batch, 2) + logits.shape[1:])
    return guided_logits(logits[:, 0], logits[:, 1], t)
  logits = logits_fn(tokens, cond)
  _check_logits(logits, tokens.shape, mask_id)
  return logits.astype(jnp.float32)


def _check_logits(logits, batch_length, mask_id):
  if logits.ndim != 3 or tuple(logits.shape[:2]) != tuple(batch_length):
    raise ValueError(f"logits_fn returned shape {logits.shape}; expected {tuple(batch_length)} + "
                     "(vocab,)")
  if logits.shape[-1] > mask_id:
    raise ValueError(f"logits_fn returned {logits.shape[-1]} classes but mask_id={mask_id}: the "
                     "sampler could pick the mask token; slice the logits to the codebook size")


# Up to this k, `largest_k` uses k exact argmax passes instead of lax.top_k: XLA's SPMD partitioner
# does not keep lax.top_k's batch sharding on every backend (on CPU it all-gathers the logits),
# while argmax reductions always stay local to each example's device.
MAX_ITERATIVE_TOP_K = 8


def largest_k(x: jax.Array, k: int):
  """The k largest entries of x along the last axis, in decreasing order: (values, indices).

  Equal values keep the lower index first, as lax.top_k does.
  """
  k = min(int(k), x.shape[-1])
  if k > MAX_ITERATIVE_TOP_K:
    return jax.lax.top_k(x, k)
  positions = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  values, indices = [], []
  for _ in range(k):
    index = jnp.argmax(x, axis=-1).astype(jnp.int32)
    values.append(jnp.take_along_axis(x, index[..., None], axis=-1)[..., 0])
    indices.append(index)
    x = jnp.where(positions == index[..., None], -jnp.inf, x)
  return jnp.stack(values, axis=-1), jnp.stack(indices, axis=-1)


def num_sampling_noise(vocab_size: int, top_k: Optional[int]) -> int:
  """Gumbel values `sample_tokens` needs per position: top_k, or the vocabulary size."""
  return vocab_size if top_k is None else min(top_k, vocab_size)


def sample_tokens(logits: jax.Array, noise: Optional[jax.Array], temperature, *,
                  top_k: Optional[int] = None):
  """Samples one token per position and returns (tokens int32 [...], log p(token) float32 [...]).

  Sampling is Gumbel-max: argmax(l + tau * g) draws from softmax(l / tau) for tau > 0 and is the
  argmax for tau = 0. With `top_k`, only the k largest logits compete. The returned log p is
  always under the full softmax(l) (temperature 1, no top-k): the model's own belief in the
  token, which stays informative even for small k (with k = 1 a renormalised probability would
  be 1 everywhere).

  Args:
    logits: float [..., V].
    noise: standard Gumbel noise [..., num_sampling_noise(V, top_k)], or None for argmax.
    temperature: scalar tau >= 0.
    top_k: optional static k.
  """
  logits = logits.astype(jnp.float32)
  if top_k is not None:
    values, indices = largest_k(logits, top_k)
    choice = _gumbel_argmax(values, noise, temperature)
    tokens = jnp.take_along_axis(indices, choice[..., None], axis=-1)[..., 0]
    chosen = jnp.take_along_axis(values, choice[..., None], axis=-1)[..., 0]
  else:
    tokens = _gumbel_argmax(logits, noise, temperature)
    chosen = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
  log_prob = chosen - jax.nn.logsumexp(logits, axis=-1)
  return tokens.astype(jnp.int32), log_prob


def _gumbel_argmax(logits, noise, temperature):
  if noise is None:
    return jnp.argmax(logits, axis=-1)
  return jnp.argmax(logits + temperature * noise, axis=-1)


def lowest_k_mask(scores: jax.Array, k: jax.Array) -> jax.Array:
  """True at the k[b] lowest scores of each row b of scores [B, T]; ties go to lower indices."""
  length = scores.shape[-1]
  order = jnp.argsort(scores, axis=-1, stable=True)
  positions = jnp.arange(length, dtype=jnp.int32)
  ranks = jax.vmap(lambda o: jnp.zeros((length,), jnp.int32).at[o].set(positions))(order)
  return ranks < k[:, None]


def check_top_k(top_k: Optional[int]) -> Optional[int]:
  if top_k is None:
    return None
  top_k = int(top_k)
  if top_k < 1:
    raise ValueError(f"top_k={top_k}: use None (no filtering) or a positive integer")
  return top_k


def decode_options(sampling_config, stage: str) -> dict:
  """`decode` keyword arguments from the `sampling` config section for stage 'base' or 'sr'.

  See muse_jax/configs/common_sampling.py; mask_id and the inputs are the caller's.
  """
  if stage not in ("base", "sr"):
    raise ValueError(f"stage={stage!r}; use 'base' or 'sr'")
  c = sampling_config
  top_k = c.get("top_k")
  temperature_end = c.get("temperature_end")
  return dict(
      num_steps=int(c.base_steps if stage == "base" else c.sr_steps),
      schedule=c.schedule,
      guidance_scale=float(c.guidance_scale if stage == "base" else c.sr_guidance_scale),
      guidance_schedule=c.guidance_schedule,
      temperature=float(c.temperature),
      temperature_end=None if temperature_end is None else float(temperature_end),
      choice_temperature=float(c.choice_temperature),
      top_k=None if top_k is None else int(top_k),
      unroll=bool(c.get("unroll_loop", False)),
  )


# --------------------------------------------------------------------------------------------
# The sampler.
# --------------------------------------------------------------------------------------------


def decode(logits_fn: LogitsFn,
           init_tokens: jax.Array,
           cond: Any,
           uncond: Any,
           key: jax.Array,
           *,
           mask_id: int,
           num_steps: int,
           schedule: Union[str, Callable] = "cosine",
           guidance_scale: float = 0.0,
           guidance_schedule: str = "linear",
           temperature: float = 1.0,
           temperature_end: Optional[float] = None,
           choice_temperature: float = DEFAULT_CHOICE_TEMPERATURE,
           top_k: Optional[int] = None,
           known_mask: Optional[jax.Array] = None,
           return_history: bool = False,
           prepare_cond: Optional[Callable[[Any], Any]] = None,
           unroll: bool = False):
  """Generates the masked tokens of `init_tokens` by parallel decoding (module docstring).

  Args:
    logits_fn: pure model function `(tokens [B', T], cond) -> logits [B', T, V]`.
    init_tokens: int [B, T]; `mask_id` marks tokens to generate (all of them for text-to-image).
    cond: conditioning pytree with leading batch dim B.
    uncond: same structure and shapes as `cond`: the null condition or a negative prompt.
      Ignored (may be None) when guidance_scale == 0.
    key: a PRNG key; the same key gives the same result.
    mask_id: id of the mask token (>= V, usually the codebook size).
    num_steps: number of decoding steps S (Muse: 24 base, 8 super-resolution).
    schedule: masking schedule name or callable (`mask_schedule`).
    guidance_scale: the final guidance t; 0 disables CFG (static).
    guidance_schedule: 'linear' (ramp from 0) or 'constant'.
    temperature: sampling temperature (start value if temperature_end is given); 0 = argmax.
    temperature_end: if given, the temperature ramps linearly to it over the steps.
    choice_temperature: scale of the Gumbel noise added to confidences, annealed linearly to 0.
    top_k: if given, sample only among the k most likely tokens.
    known_mask: optional bool [B, T]; True = keep init_tokens there, False = generate (the
      value in init_tokens is then ignored). Positions holding mask_id are generated either
      way. Default: init_tokens != mask_id.
    return_history: static; also return the tokens after every step, int32 [S, B, T].
    prepare_cond: optional `f(cond) -> model input`, applied ONCE before the loop to the
      condition the model sees (the paired 2B condition under guidance, else `cond`); its
      output is what `logits_fn` receives. Use it to hoist work that is the same at every
      step, e.g. the cross-attention keys/values of the text.
    unroll: static; unroll the step loop (one straight-line program: no per-step loop
      bookkeeping or host round trip, longer compile).

  Returns:
    int32 [B, T] tokens with no mask_id left, or (tokens, history) if return_history.
  """
  num_steps = int(num_steps)
  if num_steps < 1:
    raise ValueError(f"num_steps={num_steps}: decoding needs at least one step")
  top_k = check_top_k(top_k)
  tokens = jnp.asarray(init_tokens).astype(jnp.int32)
  if tokens.ndim != 2:
    raise ValueError(f"init_tokens must be [batch, length], got shape {tokens.shape}")
  if known_mask is None:
    known = tokens != mask_id
  else:
    known = jnp.asarray(known_mask, bool)
    if known.shape != tokens.shape:
      raise ValueError(f"known_mask shape {known.shape} != init_tokens shape {tokens.shape}")
    known = known & (tokens != mask_id)  # a position holding mask_id is always generated
    tokens = jnp.where(known, tokens, mask_id)

  # Everything that does not depend on the step is computed once, outside the loop.
  num_masked = mask_schedule.num_masked_after_steps(
      jnp.sum(~known, axis=-1), num_steps, schedule)  # [B, S]
  use_cfg = guidance_scale != 0
  guidance = jnp.asarray(guidance_per_step(num_steps, guidance_scale, guidance_schedule))
  temperatures = jnp.asarray(temperature_per_step(num_steps, temperature, temperature_end))
  greedy = temperature == 0 and (temperature_end is None or temperature_end == 0)
  choice_temps = jnp.asarray(choice_temperature_per_step(num_steps, choice_temperature))
  cond, paired_cond = model_conditions(cond, uncond, use_cfg, prepare_cond)

  # One key per step, split once; each step draws ONE Gumbel array holding the sampling noise
  # ([..., :n]) and the confidence noise ([..., n]) (fewer RNG kernels to run and compile).
  step_keys = jax.random.split(key, num_steps)

  def step(i, carry):
    tokens, history = carry
    unknown = tokens == mask_id
    logits = model_logits(logits_fn, tokens, cond, paired_cond, guidance[i], use_cfg=use_cfg,
                          mask_id=mask_id)
    n = 0 if greedy else num_sampling_noise(logits.shape[-1], top_k)
    noise = jax.random.gumbel(step_keys[i], tokens.shape + (n + 1,), jnp.float32)
    sampled, log_prob = sample_tokens(logits, None if greedy else noise[..., :n],
                                      temperatures[i], top_k=top_k)
    sampled = jnp.where(unknown, sampled, tokens)
    confidence = jnp.where(unknown, log_prob + choice_temps[i] * noise[..., n], jnp.inf)
    remask = lowest_k_mask(confidence, num_masked[:, i])
    tokens = jnp.where(remask, mask_id, sampled)
    if history is not None:
      history = history.at[i].set(tokens)
    return tokens, history

  history = (jnp.zeros((num_steps,) + tokens.shape, jnp.int32) if return_history else None)
  tokens, history = jax.lax.fori_loop(0, num_steps, step, (tokens, history),
                                      unroll=bool(unroll))
  if return_history:
    return tokens, history
  return tokens
