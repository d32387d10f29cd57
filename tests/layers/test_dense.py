"""dense / project_heads / merge_heads / layer_norm against plain einsum and flax modules."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.layers.dense import (DenseParams, LayerNormParams, dense, layer_norm,
                                       merge_heads, output_contributions, output_projection,
                                       position_rows, project_heads)


def _normal(key, shape):
  return jax.random.normal(jax.random.PRNGKey(key), shape)


def test_dense_matches_flax_dense_on_several_leading_axes():
  x = _normal(0, (2, 3, 5, 8))
  params = DenseParams(8, 4, ("embed", "mlp")).init(jax.random.PRNGKey(1))["params"]
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


def test_output_dropout_is_keyed_by_position_and_contributions_sum_to_it():
  """output_projection's mask does not depend on the chunking, and output_contributions
  of scattered entries (shared or per-head rows) scatter-add to the same result."""
  batch, heads, length, d_head, d_model = 2, 3, 12, 4, 5
  out = _normal(20, (batch, heads, length, d_head))
  kernel = _normal(21, (heads, d_head, d_model))
  rng = jax.random.PRNGKey(22)
  want = output_projection(out, kernel, 0.5, rng, length, jnp.float32)
  for chunk in (4, 5):
    np.testing.assert_allclose(output_projection(out, kernel, 0.5, rng, chunk, jnp.float32),
                               want, rtol=1e-6, atol=1e-6)
  assert 0.3 < float(jnp.mean(want == 0)) < 0.7
  n_rows = batch * length
  perm = jnp.stack([jax.random.permutation(jax.random.PRNGKey(30 + i), length)
                    for i in range(batch * heads)]).reshape(batch, heads, length)
  for positions in (perm[:, :1], perm):  # the heads' entries at the same / own positions
    rows = position_rows(batch, length, positions).astype(jnp.int32)
    shuffled = jnp.take_along_axis(out, jnp.broadcast_to(positions, out.shape[:3])[..., None],
                                   axis=2)
    parts = output_contributions(shuffled, kernel, 0.5, rng, rows, n_rows, jnp.float32)
    got = jnp.zeros((n_rows, d_model)).at[rows.reshape(-1)].add(parts.reshape(-1, d_model))
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-5)
