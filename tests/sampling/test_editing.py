"""Tests for muse_jax.sampling.editing (inpainting, outpainting, mask-free editing)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from muse_jax.sampling import editing

V = 8  # codebook size
MASK = V


def rng_key(seed):
  """'rbg' keys compile much faster than threefry on CPU."""
  return jax.random.key(seed, impl="rbg")


def favourite_token_model(favourite, seed=0, length=16):
  """Token-dependent toy model with a strong preference for `favourite` under the text cond."""
  rng = np.random.default_rng(seed)
  emb = jnp.asarray(rng.normal(size=(V + 1, V)), jnp.float32)
  mix = jnp.asarray(rng.normal(size=(length, length)) / 4, jnp.float32)
  bias = jnp.zeros((V,)).at[favourite].set(20.0)

  def logits_fn(tokens, cond):
    e = emb[tokens]
    text = cond["text_len"][:, None, None] > 0
    return e + jnp.einsum("st,btv->bsv", mix, e) + jnp.where(text, bias, 0.0)

  return logits_fn


def text_cond(batch, null=False):
  return {"text_len": jnp.full((batch,), 0 if null else 4, jnp.int32)}


# ---------------------------------------------------------------------------------- masks


def test_pixel_mask_to_token_mask_divisible_matches_block_any():
  rng = np.random.default_rng(0)
  mask = rng.random((3, 64, 48)) < 0.01
  got = np.asarray(editing.pixel_mask_to_token_mask(mask, (8, 6)))
  want = mask.reshape(3, 8, 8, 6, 8).any(axis=(2, 4))
  assert got.shape == (3, 8, 6) and got.dtype == bool
  np.testing.assert_array_equal(got, want)
  assert 0 < want.sum() < want.size  # the case is not trivial


def test_pixel_mask_to_token_mask_non_divisible_brute_force():
  rng = np.random.default_rng(1)
  mask = rng.random((37, 29)) < 0.02
  got = np.asarray(editing.pixel_mask_to_token_mask(mask, 5))
  want = np.zeros((5, 5), bool)
  for y, x in itertools.product(range(37), range(29)):
    if mask[y, x]:
      want[y * 5 // 37, x * 5 // 29] = True
  np.testing.assert_array_equal(got, want)


def test_single_pixel_marks_exactly_its_token():
  mask = np.zeros((256, 256), bool)
  mask[17, 250] = True
  got = np.asarray(editing.pixel_mask_to_token_mask(mask, 16))
  assert got.sum() == 1 and got[1, 15]
  with pytest.raises(ValueError, match="smaller than the token grid"):
    editing.pixel_mask_to_token_mask(np.zeros((8, 8)), 16)


def test_outpaint_pixel_mask():
  m = np.asarray(editing.outpaint_pixel_mask(8, 10, (2, 3, 6, 7)))
  assert m.shape == (8, 10)
  assert not m[2:6, 3:7].any()
  assert m.sum() == 80 - 16
  with pytest.raises(ValueError, match="keep_box"):
    editing.outpaint_pixel_mask(8, 10, (2, 3, 9, 7))


def test_high_res_mask_is_inside_upsampled_low_res_mask():
  # Needed by the cascade: every regenerated high-res token lies under a regenerated low-res one.
  rng = np.random.default_rng(2)
  mask = rng.random((2, 512, 512)) < 2e-5
  lo = np.asarray(editing.pixel_mask_to_token_mask(mask, 16))
  hi = np.asarray(editing.pixel_mask_to_token_mask(mask, 64))
  up = lo.repeat(4, axis=1).repeat(4, axis=2)
  assert hi.any() and np.all(up[hi])


# ---------------------------------------------------------------------- inpaint / outpaint


def test_inpaint_keeps_unmasked_tokens_and_regenerates_masked():
  batch, grid = 2, 4
  rng = np.random.default_rng(3)
  tokens = rng.integers(0, 4, size=(batch, grid * grid)).astype(np.int32)
  pixel_mask = np.zeros((batch, 32, 32), bool)
  pixel_mask[0, 5:12, 3:20] = True
  pixel_mask[1, 30:, 30:] = True
  token_mask = np.asarray(editing.pixel_mask_to_token_mask(pixel_mask, grid)).reshape(batch, -1)
  fn = favourite_token_model(favourite=6)
  run = jax.jit(lambda tok, m, k: editing.inpaint(
      fn, tok, m, text_cond(batch), text_cond(batch, null=True), k, mask_id=MASK, num_steps=4,
      guidance_scale=2.0, return_history=True))
  out, hist = run(tokens, token_mask, rng_key(0))
  out, hist = np.asarray(out), np.asarray(hist)
  for step in hist:
    np.testing.assert_array_equal(step[~token_mask], tokens[~token_mask])
  np.testing.assert_array_equal(out[~token_mask], tokens[~token_mask])
  assert np.all(out[token_mask] == 6)  # regenerated (the originals are all < 4)
  assert token_mask.sum(-1).tolist() == [2 * 3, 1]  # rows 5:12 -> 2 tokens, cols 3:20 -> 3


def test_outpaint_with_unbatched_grid_mask():
  batch = 3
  rng = np.random.default_rng(4)
  tokens = rng.integers(0, 4, size=(batch, 16)).astype(np.int32)
  pixel_mask = editing.outpaint_pixel_mask(64, 64, (16, 16, 48, 48))
  token_mask = editing.pixel_mask_to_token_mask(pixel_mask, 4)  # [4, 4], shared by the batch
  fn = favourite_token_model(favourite=7)
  out = np.asarray(jax.jit(lambda k: editing.outpaint(
      fn, tokens, token_mask, text_cond(batch), None, k, mask_id=MASK, num_steps=3))(rng_key(1)))
  keep = ~np.asarray(token_mask).reshape(-1)
  assert keep.sum() == 4  # the central 2x2 tokens
  np.testing.assert_array_equal(out[:, keep], tokens[:, keep])
  assert np.all(out[:, ~keep] == 7)
  with pytest.raises(ValueError, match="does not fit"):
    editing.inpaint(fn, tokens, np.zeros((5, 5), bool), text_cond(batch), None, rng_key(0),
                    mask_id=MASK, num_steps=2)


def test_cascade_recipe_low_res_then_high_res():
  """Base inpaints 4x4 tokens; SR (8x8) copies each token's low-res parent from its condition."""
  batch = 2
  rng = np.random.default_rng(5)
  lo_tokens = rng.integers(0, 4, size=(batch, 16)).astype(np.int32)
  hi_tokens = rng.integers(0, 4, size=(batch, 64)).astype(np.int32)
  pixel_mask = np.zeros((batch, 64, 64), bool)
  pixel_mask[0, 10:30, 20:50] = True
  pixel_mask[1, :9, :] = True
  lo_mask = editing.pixel_mask_to_token_mask(pixel_mask, 4)
  hi_mask = np.asarray(editing.pixel_mask_to_token_mask(pixel_mask, 8)).reshape(batch, -1)
  base = favourite_token_model(favourite=6)
  parent = np.array([(r // 2) * 4 + c // 2 for r in range(8) for c in range(8)])

  def sr_fn(tokens, cond):
    del tokens
    lowres_parent = cond["lowres"][:, parent]  # [B', 64]
    return 10.0 * jax.nn.one_hot(lowres_parent, V)

  @jax.jit
  def pipeline(key):
    key_lo, key_hi = jax.random.split(key)
    lo = editing.inpaint(base, lo_tokens, lo_mask, text_cond(batch), text_cond(batch, True),
                         key_lo, mask_id=MASK, num_steps=4, guidance_scale=1.0)
    sr_cond = {"lowres": lo, "text_len": jnp.full((batch,), 4)}
    sr_uncond = {"lowres": lo, "text_len": jnp.zeros((batch,), jnp.int32)}
    hi = editing.inpaint(sr_fn, hi_tokens, hi_mask, sr_cond, sr_uncond, key_hi, mask_id=MASK,
                         num_steps=2, guidance_scale=1.0)
    return lo, hi

  lo, hi = (np.asarray(x) for x in pipeline(rng_key(2)))
  lo_flat = np.asarray(lo_mask).reshape(batch, -1)
  np.testing.assert_array_equal(lo[~lo_flat], lo_tokens[~lo_flat])
  assert np.all(lo[lo_flat] == 6)
  np.testing.assert_array_equal(hi[~hi_mask], hi_tokens[~hi_mask])
  assert np.all(hi[hi_mask] == 6)  # each regenerated hi-res token copied its inpainted parent


# ------------------------------------------------------------------------ mask-free editing


def test_mask_free_edit_resamples_k_distinct_tokens_and_respects_editable():
  batch, length = 2, 64
  tokens = np.zeros((batch, length), np.int32)
  editable = np.ones((batch, length), bool)
  editable[:, :8] = False
  fn = favourite_token_model(favourite=1, length=length)
  k = editing.num_resampled(length, 0.08)
  assert k == 5
  run = jax.jit(lambda key: editing.mask_free_edit(
      fn, tokens, text_cond(batch), text_cond(batch, True), key, mask_id=MASK,
      editable_mask=editable, return_history=True))
  out, hist = (np.asarray(x) for x in run(rng_key(3)))
  assert hist.shape == (100, batch, length)
  assert (hist[0] == 1).sum(-1).tolist() == [k, k]  # k distinct positions in iteration 0
  changed = np.diff(np.concatenate([tokens[None], hist]), axis=0) != 0
  assert changed.sum(-1).max() <= k
  for step in hist:
    assert np.all(step[~editable] == 0)
  assert (out[editable] == 1).mean() > 0.97  # 1 - 0.92^100: almost every token was resampled
  again = np.asarray(run(rng_key(3))[0])
  np.testing.assert_array_equal(again, out)


def test_mask_free_edit_uses_constant_guidance_and_top_k():
  # Guided logits at t = 4: token 1 -> 3, token 2 -> 12.5, 3 -> 12, 4 -> 11.5 (cond-only top-3 is
  # {1, 2, 3}; guided top-3 is {2, 3, 4}).
  lc = np.array([0.0, 3.0, 2.5, 2.4, 2.3, -9.0, -9.0, -9.0])
  lu = np.array([0.0, 3.0, 0.0, 0.0, 0.0, -9.0, -9.0, -9.0])
  table = jnp.asarray(np.stack([np.tile(lc, (64, 1)), np.tile(lu, (64, 1))]), jnp.float32)
  batch_sizes = []

  def fn(tokens, cond):
    batch_sizes.append(tokens.shape[0])
    return table[cond["id"]]

  tokens = np.zeros((4, 64), np.int32)
  cond, uncond = {"id": jnp.zeros(4, jnp.int32)}, {"id": jnp.ones(4, jnp.int32)}
  out = np.asarray(jax.jit(lambda key: editing.mask_free_edit(
      fn, tokens, cond, uncond, key, mask_id=MASK, iterations=40, temperature=4.0))(rng_key(4)))
  assert set(batch_sizes) == {8}  # one forward on the 2B cond/uncond batch
  resampled = out[out != 0]
  assert resampled.size > 0.9 * out.size
  assert set(np.unique(resampled)) == {2, 3, 4}
  # Without guidance only the conditional branch runs and top-3 is {1, 2, 3}.
  batch_sizes.clear()
  out0 = np.asarray(jax.jit(lambda key: editing.mask_free_edit(
      fn, tokens, cond, None, key, mask_id=MASK, iterations=40, guidance_scale=0.0,
      temperature=4.0))(rng_key(4)))
  assert set(batch_sizes) == {4}
  assert set(np.unique(out0[out0 != 0])) == {1, 2, 3}


def test_mask_free_edit_batch_sharded_without_communication():
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  mesh = Mesh(np.array(jax.devices()), ("data",))
  batch = NamedSharding(mesh, P("data"))
  fn = favourite_token_model(favourite=2)
  tokens = np.zeros((8, 16), np.int32)
  put = lambda x: jax.device_put(x, batch)
  run = jax.jit(lambda tok, c, u, key: editing.mask_free_edit(
      fn, tok, c, u, key, mask_id=MASK, iterations=10, resample_fraction=0.25))
  args = (put(tokens), jax.tree.map(put, text_cond(8)), jax.tree.map(put, text_cond(8, True)),
          rng_key(6))
  compiled = run.lower(*args).compile()
  hlo = compiled.as_text()
  for collective in ("all-gather", "all-reduce", "all-to-all", "collective-permute"):
    assert collective not in hlo
  out = compiled(*args)
  assert out.sharding.is_equivalent_to(batch, 2)
  assert np.all(np.asarray(out)[np.asarray(out) != 0] == 2)
