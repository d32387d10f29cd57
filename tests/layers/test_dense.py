"""dense / project_heads / merge_heads / layer_norm against plain einsum and flax modules."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.layers.dense import (DenseParams, LayerNormParams, dense, layer_norm,
                                       merge_heads, project_heads)


def _normal(key, shape):
  return jax.random.normal(jax.random.PRNGKey(key), shape)


def test_dense_matches_flax_dense_on_several_leading_axes():
  x = _normal(0, (2, 3, 5, 8))
  params = DenseParams(8, 4).init(jax.random.PRNGKey(1))["params"]
  got = dense(x, params["kernel"], params["bias"])
  want = nn.Dense(4).apply({"params": params}, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Gradients too (the 2-D product is a layout choice, not a different function).
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))
  g_got = jax.grad(loss(dense), argnums=(0, 1))(x, params["kernel"])
  g_want = jax.grad(loss(lambda x, k: jnp.einsum("abci,io->abco", x, k)), argnums=(0, 1))(
      x, params["kernel"])
  for a, b in zip(g_got, g_want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_project_and_merge_heads_match_einsum():
  x = _normal(0, (2, 7, 8))
  w_in = _normal(1, (8, 3, 4))
  np.testing.assert_allclose(project_heads(x, w_in), jnp.einsum("bmf,fhk->bhmk", x, w_in),
                             rtol=1e-5, atol=1e-5)
  heads = _normal(2, (2, 3, 7, 4))
  w_out = _normal(3, (3, 4, 8))
  np.testing.assert_allclose(merge_heads(heads, w_out),
                             jnp.einsum("bhcd,hdo->bco", heads, w_out), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_norm_matches_flax(dtype):
  x = (_normal(0, (3, 5, 64)) * 3 + 2).astype(dtype)
  params = LayerNormParams(64).init(jax.random.PRNGKey(1))["params"]
  params = {"scale": params["scale"] + _normal(2, (64,)), "bias": _normal(3, (64,))}
  got = layer_norm(x, params["scale"], params["bias"], 1e-6)
  want = nn.LayerNorm(epsilon=1e-6, dtype=dtype).apply({"params": params}, x)
  assert got.dtype == dtype
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                             rtol=tol, atol=tol)
