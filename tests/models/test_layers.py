import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from muse_jax.models import layers as L


@pytest.mark.parametrize("shape", [(7, 12), (2, 5, 12), (2, 3, 4, 12)])
def test_rmsnorm_value_and_gradients_match_float64_reference(shape):
  norm = L.RMSNorm(shape[-1], rngs=nnx.Rngs(0), eps=1e-6)
  rng = np.random.default_rng(0)
  g = rng.normal(1.0, 0.5, shape[-1])
  norm.scale[...] = jnp.asarray(g, jnp.float32)
  x = rng.normal(size=shape)
  w = rng.normal(size=shape)  # loss = sum(norm(x) * w)

  r = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)
  y_ref = x * r * g
  dg_ref = (x * r * w).reshape(-1, shape[-1]).sum(0)
  dx_ref = r * w * g - r ** 3 * x * np.mean(w * g * x, axis=-1, keepdims=True)

  graphdef, state = nnx.split(norm)

  def loss(state, x):
    return jnp.sum(nnx.merge(graphdef, state)(x) * w)

  y = norm(jnp.asarray(x, jnp.float32))
  assert y.shape == shape
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  d_state, dx = jax.grad(loss, argnums=(0, 1))(state, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(d_state["scale"][...], dg_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)


def _gelu64(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


@pytest.mark.parametrize("dtype,rtol,atol", [(jnp.float32, 1e-5, 1e-5),
                                             (jnp.bfloat16, 8e-3, 1e-3)])
def test_gelu_value_and_gradient_match_float64_reference(dtype, rtol, atol):
  rng = np.random.default_rng(0)
  x = jnp.asarray(np.concatenate([np.linspace(-8, 8, 401), rng.normal(0, 3, 600)]), dtype)
  ct = jnp.asarray(rng.normal(size=x.shape), dtype)
  x64, ct64 = np.asarray(x, np.float64), np.asarray(ct, np.float64)
  eps = 1e-6  # the reference's derivative: central differences in float64
  dx_ref = ct64 * (_gelu64(x64 + eps) - _gelu64(x64 - eps)) / (2 * eps)

  y, vjp = jax.vjp(L.gelu_tanh, x)
  (dx,) = vjp(ct)
  assert y.dtype == dx.dtype == dtype
  # The forward is jax.nn.gelu's, in the input's dtype (in bfloat16, 1 + tanh cancels near
  # -3 and below); the backward works in float32 whatever the dtype.
  np.testing.assert_array_equal(y, jax.nn.gelu(x, approximate=True))
  if dtype == jnp.float32:
    np.testing.assert_allclose(y, _gelu64(x64), rtol=rtol, atol=atol)
  np.testing.assert_allclose(np.asarray(dx, np.float64), dx_ref, rtol=rtol, atol=atol)
