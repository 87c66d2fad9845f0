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
