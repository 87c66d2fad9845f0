"""Tests for muse_jax.sampling.parallel_decode with small toy models."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from muse_jax.sampling import parallel_decode

V = 8  # codebook size
MASK = V  # mask id
T = 32  # tokens per example
D = 6  # text width


def rng_key(seed):
  """An 'rbg' key: compiles faster than threefry on CPU (the sharded test uses threefry)."""
  return jax.random.key(seed, impl="rbg")


def context_model(seed=0):
  """Tiny random model whose logits depend on all tokens (incl. masks) and the text."""
  rng = np.random.default_rng(seed)
  emb = jnp.asarray(rng.normal(size=(V + 1, V)), jnp.float32)
  mix = jnp.asarray(rng.normal(size=(T, T)) / math.sqrt(T), jnp.float32)
  proj = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)

  def logits_fn(tokens, cond):
    e = emb[tokens]
    text = jnp.where((cond["text_len"] > 0)[:, None], cond["text"].mean(1), 0.0)
    return 1.5 * (e + jnp.einsum("st,btv->bsv", mix, e)) + 2.0 * (text @ proj)[:, None, :]

  return logits_fn


def table_model(table):
  """Model that ignores tokens: logits[b] = table[cond['id'][b]] with table [K, T', V']."""
  table = jnp.asarray(table, jnp.float32)

  def logits_fn(tokens, cond):
    del tokens
    return table[cond["id"]]

  return logits_fn


def text_cond(batch, seed=1, null=False):
  text = np.random.default_rng(seed).normal(size=(batch, 4, D)).astype(np.float32)
  return {"text": jnp.asarray(text), "text_len": jnp.full((batch,), 0 if null else 4, jnp.int32)}


def reference_counts(n, steps):
  counts, prev = [], n
  for i in range(steps):
    target = math.floor(max(math.cos(math.pi / 2 * (i + 1) / steps), 1e-6) * n + 1e-9)
    prev = 0 if i == steps - 1 else max(0, min(target, prev - 1))
    counts.append(prev)
  return counts


def reference_decode(logits_fn, tokens, cond, uncond, key, *, num_steps, guidance_scale,
                     temperature, choice_temperature, top_k=None):
  """Step-by-step eager re-implementation (numpy), with the documented formulas and key use."""
  tokens = np.array(tokens)
  known = tokens != MASK
  n_unknown = (~known).sum(-1)
  counts = np.array([reference_counts(int(n), num_steps) for n in n_unknown])
  step_keys = jax.random.split(key, num_steps)
  for i in range(num_steps):
    t = guidance_scale * (i / (num_steps - 1))
    c_i = choice_temperature * (1 - (i + 1) / num_steps)
    lc = np.asarray(logits_fn(jnp.asarray(tokens), cond), np.float32)
    if guidance_scale:
      lu = np.asarray(logits_fn(jnp.asarray(tokens), uncond), np.float32)
      logits = (1 + t) * lc - t * lu
    else:
      logits = lc
    n = V if top_k is None else top_k
    noise = np.asarray(jax.random.gumbel(step_keys[i], logits.shape[:2] + (n + 1,)))
    if top_k is None:
      index, values = np.broadcast_to(np.arange(V), logits.shape), logits
    else:  # the k largest logits, in decreasing order
      index = np.argsort(-logits, axis=-1, kind="stable")[..., :top_k]
      values = np.take_along_axis(logits, index, -1)
    choice = np.argmax(values + temperature * noise[..., :n], -1)
    sampled = np.take_along_axis(index, choice[..., None], -1)[..., 0]
    m = logits.max(-1, keepdims=True)  # confidence: log p under the full guided softmax
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    logp = np.take_along_axis(logits, sampled[..., None], -1)[..., 0] - lse
    unknown = tokens == MASK
    sampled = np.where(unknown, sampled, tokens)
    conf = np.where(unknown, logp + c_i * noise[..., n], np.inf)
    new = sampled.copy()
    for b in range(tokens.shape[0]):
      order = np.argsort(conf[b], kind="stable")
      new[b, order[:counts[b, i]]] = MASK
    tokens = new
  return tokens


_JITTED = {}


def run_decode(logits_fn, tokens, cond, uncond, key, known_mask=None, **kw):
  """jit(decode) with static options kw, cached so that repeated calls compile once."""
  cache_key = (logits_fn, tuple(sorted(kw.items())))
  if cache_key not in _JITTED:
    _JITTED[cache_key] = jax.jit(
        lambda tok, c, u, k, known: parallel_decode.decode(
            logits_fn, tok, c, u, k, mask_id=MASK, known_mask=known, **kw))
  return _JITTED[cache_key](tokens, cond, uncond, key, known_mask)


@pytest.fixture(scope="module")
def inpaint_run():
  """One CFG run with per-example known masks (N = 32, 20, 5, 0 unknown) and its history."""
  rng = np.random.default_rng(0)
  init = rng.integers(0, V, size=(4, T)).astype(np.int32)
  unknown = np.zeros((4, T), bool)
  unknown[0] = True
  unknown[1, rng.choice(T, 20, replace=False)] = True
  unknown[2, [0, 7, 8, 30, 31]] = True
  # Row 0 marks unknowns with mask_id; rows 1-2 hold garbage there, excluded by known_mask;
  # row 2 also holds mask_id at a position known_mask calls known: it must be generated too.
  init[0] = MASK
  known_mask = ~unknown
  init[2, 15] = MASK
  unknown[2, 15] = True
  out, hist = run_decode(context_model(), init, text_cond(4), text_cond(4, null=True),
                         rng_key(3), known_mask=known_mask, num_steps=8,
                         guidance_scale=3.0, return_history=True)
  return init, unknown, np.asarray(out), np.asarray(hist)


def test_known_tokens_never_change(inpaint_run):
  init, unknown, out, hist = inpaint_run
  for step in hist:
    np.testing.assert_array_equal(step[~unknown], init[~unknown])
  np.testing.assert_array_equal(out[~unknown], init[~unknown])


def test_no_mask_left_and_revealed_tokens_stay(inpaint_run):
  _, unknown, out, hist = inpaint_run
  assert not np.any(out == MASK)
  assert np.all((out >= 0) & (out < V))
  np.testing.assert_array_equal(hist[-1], out)
  for prev, cur in zip(hist[:-1], hist[1:]):
    revealed = prev != MASK
    np.testing.assert_array_equal(cur[revealed], prev[revealed])
  # Everything unknown at the start was generated (masked before step 0).
  assert np.all(unknown.sum(-1) == [32, 20, 6, 0])


def test_masked_count_per_step_follows_schedule(inpaint_run):
  _, unknown, _, hist = inpaint_run
  masked = (hist == MASK).sum(-1).T  # [B, S]
  for b in range(4):
    assert masked[b].tolist() == reference_counts(int(unknown[b].sum()), 8), b


@pytest.mark.parametrize("top_k", [None, 3])
def test_matches_step_by_step_reference(top_k):
  fn = context_model(seed=5)
  init = np.full((3, T), MASK, np.int32)
  init[1, :10] = np.arange(10) % V
  cond, uncond = text_cond(3, seed=2), text_cond(3, seed=4)  # uncond: a "negative prompt"
  key = rng_key(11)
  kw = dict(num_steps=6, guidance_scale=2.0, temperature=0.7, choice_temperature=0.5,
            top_k=top_k)
  got = np.asarray(run_decode(fn, init, cond, uncond, key, **kw))
  want = reference_decode(fn, init, cond, uncond, key, **kw)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_prepared_condition_and_unrolled_loop_match_reference(guidance):
  fn = context_model(seed=5)
  seen = []

  def prepare(c):  # hoisted work: the text mean, once, on the rows the model will see
    seen.append(c["text"].shape[0])
    return {"mean": c["text"].mean(1), "text_len": c["text_len"]}

  def prepared_fn(tokens, p):
    return fn(tokens, {"text": p["mean"][:, None], "text_len": p["text_len"]})

  init = np.full((3, T), MASK, np.int32)
  cond, uncond = text_cond(3, seed=2), text_cond(3, seed=4)
  kw = dict(num_steps=5, guidance_scale=guidance, temperature=0.7, choice_temperature=0.5)
  want = reference_decode(fn, init, cond, uncond, rng_key(11), **kw)
  got = parallel_decode.decode(prepared_fn, init, cond, uncond, rng_key(11), mask_id=MASK,
                               prepare_cond=prepare, unroll=True, **kw)
  np.testing.assert_allclose(np.asarray(got), want)
  assert seen == [6 if guidance else 3]  # applied once, to the paired rows under CFG


def test_guidance_zero_equals_cond_only_sampler():
  base = context_model(seed=6)
  batch_sizes = []

  def fn(tokens, cond):
    batch_sizes.append(tokens.shape[0])
    return base(tokens, cond)

  init = np.full((3, T), MASK, np.int32)
  key = rng_key(2)
  kw = dict(num_steps=5, guidance_scale=0.0, temperature=1.0, choice_temperature=4.5)
  a = np.asarray(run_decode(fn, init, text_cond(3), text_cond(3, null=True), key, **kw))
  b = np.asarray(run_decode(fn, init, text_cond(3), text_cond(3, seed=9), key, **kw))
  assert set(batch_sizes) == {3}  # the unconditional branch was never evaluated
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a, reference_decode(base, init, text_cond(3), None, key, **kw))
  # With guidance the model runs once per step on the 2B concatenation.
  batch_sizes.clear()
  g = np.asarray(run_decode(fn, init, text_cond(3), text_cond(3, null=True), key,
                            **{**kw, "guidance_scale": 3.0}))
  assert set(batch_sizes) == {6}
  assert not np.array_equal(g, a)


def test_same_seed_same_result_different_seed_differs():
  fn = context_model(seed=1)
  init = np.full((4, T), MASK, np.int32)
  kw = dict(num_steps=6, guidance_scale=2.0)
  args = (init, text_cond(4), text_cond(4, null=True))
  a = np.asarray(run_decode(fn, *args, rng_key(7), **kw))
  b = np.asarray(run_decode(fn, *args, rng_key(7), **kw))
  c = np.asarray(run_decode(fn, *args, rng_key(8), **kw))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


@pytest.mark.parametrize("schedule,expect", [
    ("linear", "ramp"), ("constant", "all2"), (None, "all1")])
def test_guidance_schedule_exact(schedule, expect):
  # Token 1 wins at t = 0; token 2 wins once t > 1/9: guided logits are 1 vs 0.9 + 0.9 t.
  lc = np.tile([0.0, 1.0, 0.9, -5.0], (16, 1))
  lu = np.tile([0.0, 1.0, 0.0, -5.0], (16, 1))
  fn = table_model(np.stack([lc, lu]))
  init = np.full((2, 16), 4, np.int32)
  cond, uncond = {"id": jnp.zeros(2, jnp.int32)}, {"id": jnp.ones(2, jnp.int32)}
  kw = dict(num_steps=4, temperature=0.0, choice_temperature=0.0)
  if schedule is None:
    kw["guidance_scale"] = 0.0
  else:
    kw.update(guidance_scale=1.0, guidance_schedule=schedule)
  out = np.asarray(jax.jit(lambda k: parallel_decode.decode(
      fn, init, cond, uncond, k, mask_id=4, **kw))(rng_key(0)))
  if expect == "ramp":
    # Step 0 (t = 0) reveals 16 - floor(cos(pi/8) * 16) = 2 tokens; equal confidences mask the
    # lowest positions first, so positions 14, 15 hold token 1 and later steps (t >= 1/3) give 2.
    want = np.array([2] * 14 + [1] * 2)
  elif expect == "all2":
    want = np.full(16, 2)
  else:
    want = np.full(16, 1)
  np.testing.assert_array_equal(out, np.tile(want, (2, 1)))


def test_guidance_per_step_formulas():
  np.testing.assert_allclose(parallel_decode.guidance_per_step(5, 4.0, "linear"),
                             [0, 1, 2, 3, 4])
  np.testing.assert_allclose(parallel_decode.guidance_per_step(3, 4.0, "constant"), [4, 4, 4])
  np.testing.assert_allclose(parallel_decode.guidance_per_step(1, 4.0, "linear"), [4])
  np.testing.assert_allclose(parallel_decode.choice_temperature_per_step(4, 4.5),
                             [3.375, 2.25, 1.125, 0])
  np.testing.assert_allclose(parallel_decode.temperature_per_step(3, 2.0, 0.0), [2, 1, 0])
  np.testing.assert_allclose(parallel_decode.temperature_per_step(3, 1.5), [1.5] * 3)
  lc, lu = jnp.array([1.0, 2.0]), jnp.array([3.0, -1.0])
  np.testing.assert_allclose(parallel_decode.guided_logits(lc, lu, 2.0), [3 * 1 - 2 * 3, 6 + 2])
  with pytest.raises(ValueError, match="guidance_schedule"):
    parallel_decode.guidance_per_step(3, 1.0, "cosine")


def test_negative_prompt_replaces_uncond_branch():
  # cond likes tokens 1 and 2 equally; null prompt likes 1, negative prompt likes 2.
  row = lambda v: np.tile(v, (64, 1))
  table = np.stack([row([0.0, 2.0, 2.0, -9.0]), row([0.0, 2.0, 0.0, -9.0]),
                    row([0.0, 0.0, 2.0, -9.0])])
  fn = table_model(table)
  init = np.full((4, 64), 4, np.int32)
  cond = {"id": jnp.zeros(4, jnp.int32)}
  null, negative = {"id": jnp.ones(4, jnp.int32)}, {"id": jnp.full(4, 2, jnp.int32)}

  decoders = {
      scale: jax.jit(lambda u, k, scale=scale: parallel_decode.decode(
          fn, init, cond, u, k, mask_id=4, num_steps=4, guidance_scale=scale,
          guidance_schedule="constant"))
      for scale in (0.0, 3.0)}

  def frac(uncond, scale):
    out = np.asarray(decoders[scale](uncond, rng_key(1)))
    return (out == 1).mean(), (out == 2).mean()

  ones, twos = frac(null, 3.0)
  assert twos > 0.95  # guidance pushes away from the null prompt's token 1
  ones, twos = frac(negative, 3.0)
  assert ones > 0.95  # ... and away from the negative prompt's token 2
  ones, twos = frac(null, 0.0)
  assert 0.3 < ones < 0.7 and 0.3 < twos < 0.7


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (2.0, None), (1.0, 2)])
def test_one_step_sampling_distribution(temperature, top_k):
  logits = np.array([0.0, 0.5, 1.0, 2.0])
  fn = table_model(np.tile(logits, (1, 256, 1)))
  init = np.full((8, 256), 4, np.int32)
  cond = {"id": jnp.zeros(8, jnp.int32)}
  out = np.asarray(jax.jit(lambda k: parallel_decode.decode(
      fn, init, cond, None, k, mask_id=4, num_steps=1, temperature=temperature,
      top_k=top_k))(rng_key(4)))
  scaled = logits / temperature
  if top_k is not None:
    scaled = np.where(np.arange(4) >= 4 - top_k, scaled, -np.inf)
  probs = np.exp(scaled - scaled.max())
  probs /= probs.sum()
  freq = np.bincount(out.ravel(), minlength=4) / out.size
  np.testing.assert_allclose(freq, probs, atol=0.04)
  if top_k is not None:
    assert np.all(out >= 4 - top_k)


@pytest.mark.parametrize("top_k", [None, 1])
def test_greedy_reveals_most_confident_first(top_k):
  rng = np.random.default_rng(1)
  table = rng.normal(size=(1, T, V)) * rng.uniform(0.1, 4.0, size=(1, T, 1))
  fn = table_model(table)
  init = np.full((1, T), MASK, np.int32)
  out, hist = jax.jit(lambda k: parallel_decode.decode(
      fn, init, {"id": jnp.zeros(1, jnp.int32)}, None, k, mask_id=MASK, num_steps=4,
      temperature=0.0, choice_temperature=0.0, top_k=top_k, return_history=True))(rng_key(0))
  logp = table[0] - np.log(np.exp(table[0]).sum(-1, keepdims=True))
  confidence = logp.max(-1)
  n_revealed = T - reference_counts(T, 4)[0]
  revealed = np.flatnonzero(np.asarray(hist[0, 0]) != MASK)
  assert set(revealed) == set(np.argsort(-confidence)[:n_revealed])
  np.testing.assert_array_equal(np.asarray(out[0]), table[0].argmax(-1))


def test_batch_sharded_over_eight_devices():
  devices = jax.devices()
  assert len(devices) == 8, "tests/conftest.py must set 8 host devices"
  mesh = Mesh(np.array(devices), ("data",))
  batch = NamedSharding(mesh, P("data"))
  fn = context_model(seed=2)
  init = np.full((8, T), MASK, np.int32)
  init[:, ::3] = 1
  cond, uncond = text_cond(8), text_cond(8, null=True)
  key = jax.random.key(5)
  kw = dict(num_steps=5, guidance_scale=2.0, top_k=4)
  want = np.asarray(run_decode(fn, init, cond, uncond, key, **kw))
  put = lambda x: jax.device_put(x, batch)
  sharded = jax.jit(
      lambda tok, c, u, k: parallel_decode.decode(fn, tok, c, u, k, mask_id=MASK, **kw))
  args = (put(init), jax.tree.map(put, cond), jax.tree.map(put, uncond), key)
  compiled = sharded.lower(*args).compile()
  hlo = compiled.as_text()
  for collective in ("all-gather", "all-reduce", "all-to-all", "collective-permute"):
    assert collective not in hlo  # each device decodes its own examples, no communication
  got = compiled(*args)
  assert got.sharding.is_equivalent_to(batch, 2)
  np.testing.assert_array_equal(np.asarray(got), want)
  np.testing.assert_array_equal(np.asarray(got)[:, ::3], 1)


def test_pair_conditions_interleaves_examples():
  cond = {"x": jnp.arange(3)[:, None] * jnp.ones((3, 2))}
  uncond = {"x": -jnp.arange(3)[:, None] * jnp.ones((3, 2)) - 10}
  paired = np.asarray(parallel_decode.pair_conditions(cond, uncond)["x"][:, 0])
  np.testing.assert_array_equal(paired, [0, -10, 1, -11, 2, -12])
  with pytest.raises(ValueError, match="same shape"):
    parallel_decode.pair_conditions({"x": jnp.ones((3, 2))}, {"x": jnp.ones((3, 4))})
  with pytest.raises(ValueError, match="same structure"):
    parallel_decode.pair_conditions({"x": jnp.ones(3)}, {"y": jnp.ones(3)})


def test_rejects_logits_that_include_the_mask_token():
  fn = lambda tokens, cond: jnp.zeros(tokens.shape + (V + 1,))
  tokens = jnp.full((1, T), MASK)
  with pytest.raises(ValueError, match="codebook size"):
    jax.eval_shape(lambda k: parallel_decode.decode(
        fn, tokens, {"id": jnp.zeros(1)}, None, k, mask_id=MASK, num_steps=2), rng_key(0))
  with pytest.raises(ValueError, match="top_k"):
    jax.eval_shape(lambda k: parallel_decode.decode(
        context_model(), tokens, text_cond(1), None, k, mask_id=MASK, num_steps=2, top_k=0),
                   rng_key(0))


@pytest.mark.parametrize("k", [1, 3, 12])
def test_largest_k_matches_lax_top_k(k):
  rng = np.random.default_rng(k)
  x = rng.normal(size=(2, 5, 16)).astype(np.float32)
  x[0, 0, [2, 9, 11]] = 5.0  # ties keep the lower index first
  values, indices = parallel_decode.largest_k(jnp.asarray(x), k)
  want_values, want_indices = jax.lax.top_k(jnp.asarray(x), k)
  np.testing.assert_array_equal(np.asarray(values), np.asarray(want_values))
  np.testing.assert_array_equal(np.asarray(indices), np.asarray(want_indices))
  assert np.asarray(indices)[0, 0, :min(k, 3)].tolist() == [2, 9, 11][:k]


def test_options_from_sampling_config():
  from muse_jax.configs import common_sampling
  from muse_jax.sampling import editing
  config = common_sampling.get_sampling_config()
  base = parallel_decode.decode_options(config, "base")
  sr = parallel_decode.decode_options(config, "sr")
  assert base["num_steps"] == 24 and sr["num_steps"] == 8  # Muse Sec. 2.8
  assert base["schedule"] == "cosine" and base["top_k"] is None
  assert base["temperature_end"] is None and base["choice_temperature"] == 4.5
  assert base["unroll"] is False
  config.top_k = 5
  config.temperature_end = 0.0
  base = parallel_decode.decode_options(config, "base")
  assert base["top_k"] == 5 and base["temperature_end"] == 0.0
  # Every option is a real `decode` keyword.
  jax.eval_shape(lambda k: parallel_decode.decode(
      context_model(), jnp.full((1, T), MASK), text_cond(1), text_cond(1, True), k,
      mask_id=MASK, **base), rng_key(0))
  assert editing.mask_free_options(config) == dict(
      iterations=100, resample_fraction=0.08, guidance_scale=4.0, top_k=3, temperature=1.0)
  with pytest.raises(ValueError, match="stage"):
    parallel_decode.decode_options(config, "vqgan")
