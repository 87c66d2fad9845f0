"""Zero-shot image editing with a trained Muse: inpainting, outpainting, mask-free editing.

Masks in this module are "regenerate" masks: True marks content to generate, False content to
keep. A token is regenerated if ANY pixel it covers is masked, so a kept token never overlaps the
edited region (with grid (gh, gw) over an H x W mask, pixel (y, x) belongs to token
(floor(y * gh / H), floor(x * gw / W)); when H, W divide evenly each token covers an
(H/gh) x (W/gw) block).

Cascaded inpainting / outpainting (Muse Sec. 3.3.1), as the sampling pipeline composes it:

  1. VQ-encode the image at 512 px -> high-res tokens [B, 64*64]; downsample it to 256 px and
     VQ-encode -> low-res tokens [B, 16*16].
  2. From the one full-resolution pixel mask [B, H, W] (no resizing needed):
       lo_mask = pixel_mask_to_token_mask(mask, (16, 16))
       hi_mask = pixel_mask_to_token_mask(mask, (64, 64))
  3. lo = inpaint(base_logits_fn, lo_tokens, lo_mask, text_cond, null_cond, key_lo,
                  mask_id=..., num_steps=24, guidance_scale=...)
  4. Condition the super-resolution model on the inpainted low-res tokens `lo` (both the cond
     and the uncond pytrees carry `lo`; only the text part differs) and
       hi = inpaint(sr_logits_fn, hi_tokens, hi_mask, sr_cond(lo), sr_uncond(lo), key_hi,
                    mask_id=..., num_steps=8, guidance_scale=...)
  5. VQ-decode `hi`. Outside the mask, lo and hi equal the input tokens exactly.
Outpainting is the same with a mask that covers the area outside the kept content
(`outpaint_pixel_mask`).

Mask-free editing (Muse Sec. 3.3.2): `mask_free_edit` on the low-res tokens with the base model,
then on the high-res tokens with the super-resolution model conditioned on the edited low-res
tokens. Each of the 100 iterations masks a fresh random 8% of the (editable) tokens and resamples
them with constant guidance 4 from the top-3 guided logits.

Every function here is traceable; wrap calls in `jax.jit` as described in `parallel_decode`.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

from muse_jax.sampling import parallel_decode
from muse_jax.sampling.parallel_decode import LogitsFn

Grid = Union[int, Tuple[int, int]]


def _grid_hw(grid: Grid) -> Tuple[int, int]:
  if isinstance(grid, int):
    return grid, grid
  gh, gw = (int(g) for g in grid)
  return gh, gw


def _pixel_to_token_onehot(pixels: int, tokens: int) -> jax.Array:
  """[pixels, tokens] float32 with a 1 where pixel p lies in token floor(p * tokens / pixels)."""
  owner = (jnp.arange(pixels) * tokens) // pixels
  return (owner[:, None] == jnp.arange(tokens)[None, :]).astype(jnp.float32)


def pixel_mask_to_token_mask(mask_hw: jax.Array, grid: Grid) -> jax.Array:
  """Token mask of a pixel mask: True where any pixel of the token is True.

  Args:
    mask_hw: bool (or 0/1) array [..., H, W]; True = regenerate. H, W need not be multiples of
      the grid (see module docstring for the pixel-to-token assignment), but must be >= it.
    grid: token grid (gh, gw), or one int for a square grid (16 for Muse base, 64 for SR).

  Returns:
    bool [..., gh, gw]. Flatten the last two axes (row-major) to match [B, gh * gw] tokens.
  """
  gh, gw = _grid_hw(grid)
  mask = jnp.asarray(mask_hw)
  if mask.ndim < 2:
    raise ValueError(f"pixel mask must be [..., H, W], got shape {mask.shape}")
  height, width = mask.shape[-2:]
  if height < gh or width < gw:
    raise ValueError(f"pixel mask {height}x{width} is smaller than the token grid {gh}x{gw}")
  rows = _pixel_to_token_onehot(height, gh)
  cols = _pixel_to_token_onehot(width, gw)
  hits = jnp.einsum("...hw,hr,wc->...rc", (mask != 0).astype(jnp.float32), rows, cols)
  return hits > 0


def outpaint_pixel_mask(height: int, width: int, keep_box: Sequence[int]) -> jax.Array:
  """Regenerate mask [H, W] for outpainting: True everywhere outside keep_box.

  Args:
    height: image height in pixels.
    width: image width in pixels.
    keep_box: (top, left, bottom, right) in pixels, bottom/right exclusive: the content kept.
  """
  top, left, bottom, right = (int(v) for v in keep_box)
  if not (0 <= top < bottom <= height and 0 <= left < right <= width):
    raise ValueError(f"keep_box={tuple(keep_box)} must satisfy 0 <= top < bottom <= {height} and "
                     f"0 <= left < right <= {width}")
  ys = jnp.arange(height)[:, None]
  xs = jnp.arange(width)[None, :]
  inside = (ys >= top) & (ys < bottom) & (xs >= left) & (xs < right)
  return ~inside


def _token_mask_like(token_mask: jax.Array, tokens: jax.Array) -> jax.Array:
  """Reshapes a mask given as [T], [gh, gw], [B, T] or [B, gh, gw] to tokens' [B, T]."""
  mask = jnp.asarray(token_mask, bool)
  batch, length = tokens.shape
  if mask.size == length:
    return jnp.broadcast_to(mask.reshape(1, length), (batch, length))
  if mask.size == batch * length:
    return mask.reshape(batch, length)
  raise ValueError(f"token mask of shape {mask.shape} does not fit tokens of shape "
                   f"{tokens.shape}; build it with pixel_mask_to_token_mask at the tokens' grid")


def inpaint(logits_fn: LogitsFn, tokens: jax.Array, token_mask: jax.Array, cond: Any,
            uncond: Any, key: jax.Array, *, mask_id: int, num_steps: int, **decode_kwargs):
  """Regenerates the tokens under token_mask and keeps all others exactly.

  Args:
    logits_fn: the model (see `parallel_decode`).
    tokens: int [B, T] tokens of the image being edited (no mask_id needed).
    token_mask: bool, True = regenerate; [T], [gh, gw], [B, T] or [B, gh, gw].
    cond, uncond, key: as in `parallel_decode.decode`.
    mask_id: the mask token id.
    num_steps: decoding steps (24 base, 8 super-resolution in Muse).
    **decode_kwargs: any other `parallel_decode.decode` option (guidance_scale, top_k, ...).

  Returns:
    int32 [B, T], or (tokens, history) with return_history=True.
  """
  tokens = jnp.asarray(tokens).astype(jnp.int32)
  regenerate = _token_mask_like(token_mask, tokens)
  return parallel_decode.decode(logits_fn, tokens, cond, uncond, key, mask_id=mask_id,
                                num_steps=num_steps, known_mask=~regenerate, **decode_kwargs)


def outpaint(logits_fn: LogitsFn, tokens: jax.Array, token_mask: jax.Array, cond: Any,
             uncond: Any, key: jax.Array, *, mask_id: int, num_steps: int, **decode_kwargs):
  """Outpainting: `inpaint` with a mask covering everything outside the kept content.

  Build the pixel mask with `outpaint_pixel_mask` and convert it with
  `pixel_mask_to_token_mask`; tokens that straddle the kept region's border are regenerated.
  """
  return inpaint(logits_fn, tokens, token_mask, cond, uncond, key, mask_id=mask_id,
                 num_steps=num_steps, **decode_kwargs)


def num_resampled(length: int, resample_fraction: float) -> int:
  """Tokens resampled per mask-free-editing iteration: round(fraction * T), at least 1."""
  if not 0 < resample_fraction <= 1:
    raise ValueError(f"resample_fraction={resample_fraction} must be in (0, 1]")
  return max(1, min(length, int(round(resample_fraction * length))))


def mask_free_options(sampling_config) -> dict:
  """`mask_free_edit` keyword arguments from the `sampling` config section's `editing` part."""
  e = sampling_config.editing
  top_k = e.get("mask_free_top_k")
  return dict(iterations=int(e.mask_free_iterations),
              resample_fraction=float(e.mask_free_resample_fraction),
              guidance_scale=float(e.mask_free_guidance_scale),
              top_k=None if top_k is None else int(top_k),
              temperature=float(e.mask_free_temperature))


def mask_free_edit(logits_fn: LogitsFn,
                   tokens: jax.Array,
                   cond: Any,
                   uncond: Any,
                   key: jax.Array,
                   *,
                   mask_id: int,
                   iterations: int = 100,
                   resample_fraction: float = 0.08,
                   guidance_scale: float = 4.0,
                   top_k: Optional[int] = 3,
                   temperature: float = 1.0,
                   editable_mask: Optional[jax.Array] = None,
                   return_history: bool = False,
                   prepare_cond=None,
                   unroll: bool = False):
  """Mask-free editing: iteratively resample random tokens under a new prompt (Sec. 3.3.2).

  Each iteration (one `lax.fori_loop` step) picks k = num_resampled(T, resample_fraction)
  distinct positions uniformly at random among the editable ones, replaces them by mask_id,
  runs the model once (one 2B forward with constant guidance t = guidance_scale; none of the
  unconditional work when it is 0) and samples new tokens there from the top-k guided logits at
  `temperature`. All other tokens are carried over unchanged.

  Args:
    logits_fn: the model (see `parallel_decode`).
    tokens: int [B, T] tokens of the image to edit.
    cond: the condition describing the edit (e.g. the new prompt).
    uncond: the null condition or a negative prompt (same structure as cond).
    key: PRNG key.
    mask_id: the mask token id.
    iterations: number of resampling iterations (Muse: 100).
    resample_fraction: fraction of tokens resampled per iteration (Muse: 0.08).
    guidance_scale: constant guidance t (Muse: 4); static.
    top_k: sample among the k most likely tokens (Muse: 3); None for the full distribution.
    temperature: sampling temperature (not stated in the paper; 0 = argmax).
    editable_mask: optional bool [T], [gh, gw], [B, T] or [B, gh, gw]; tokens outside it never
      change. If fewer than k tokens are editable, all of them are resampled each iteration.
    return_history: static; also return tokens after every iteration, int32 [iterations, B, T].
    prepare_cond, unroll: as in `parallel_decode.decode`.

  Returns:
    int32 [B, T], or (tokens, history) if return_history.
  """
  iterations = int(iterations)
  if iterations < 1:
    raise ValueError(f"iterations={iterations} must be >= 1")
  top_k = parallel_decode.check_top_k(top_k)
  if temperature < 0:
    raise ValueError(f"temperature={temperature} must be >= 0 (0 means argmax)")
  tokens = jnp.asarray(tokens).astype(jnp.int32)
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
  batch, length = tokens.shape
  num_chosen = num_resampled(length, resample_fraction)
  editable = (jnp.ones_like(tokens, bool) if editable_mask is None else
              _token_mask_like(editable_mask, tokens))
  use_cfg = guidance_scale != 0
  cond, paired_cond = parallel_decode.model_conditions(cond, uncond, use_cfg, prepare_cond)
  guidance = jnp.float32(guidance_scale)
  greedy = temperature == 0
  num_chosen_per_row = jnp.full((batch,), num_chosen, jnp.int32)

  if greedy:
    n = 0
  elif top_k is not None:
    n = top_k
  else:  # the vocabulary size, from an abstract (trace-only) evaluation of the model
    n = jax.eval_shape(lambda t: parallel_decode.model_logits(
        logits_fn, t, cond, paired_cond, guidance, use_cfg=use_cfg, mask_id=mask_id),
        tokens).shape[-1]
  step_keys = jax.random.split(key, iterations)

  def step(i, carry):
    tokens, history = carry
    # One Gumbel draw per iteration: [..., :n] samples tokens, [..., n] ranks positions (the k
    # largest of iid noise form a uniformly random k-subset).
    noise = jax.random.gumbel(step_keys[i], tokens.shape + (n + 1,), jnp.float32)
    # k distinct positions per row: the lowest k of -noise (argsort keeps batch sharding).
    priority = jnp.where(editable, -noise[..., n], jnp.inf)
    chosen = parallel_decode.lowest_k_mask(priority, num_chosen_per_row) & editable
    masked = jnp.where(chosen, mask_id, tokens)
    logits = parallel_decode.model_logits(logits_fn, masked, cond, paired_cond, guidance,
                                          use_cfg=use_cfg, mask_id=mask_id)
    if not greedy:
      n_logits = parallel_decode.num_sampling_noise(logits.shape[-1], top_k)
      if n_logits != n:
        raise ValueError(f"logits_fn returned {logits.shape[-1]} classes, fewer than top_k={n}")
    sampled, _ = parallel_decode.sample_tokens(logits, None if greedy else noise[..., :n],
                                               temperature, top_k=top_k)
    tokens = jnp.where(chosen, sampled, tokens)
    if history is not None:
      history = history.at[i].set(tokens)
    return tokens, history

  history = jnp.zeros((iterations,) + tokens.shape, jnp.int32) if return_history else None
  tokens, history = jax.lax.fori_loop(0, iterations, step, (tokens, history),
                                      unroll=bool(unroll))
  if return_history:
    return tokens, history
  return tokens
