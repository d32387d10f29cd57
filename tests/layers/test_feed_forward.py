"""Tests for reformer_jax.layers.feed_forward: numpy reference, chunked == unchunked, memory."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from reformer_jax.layers.feed_forward import ChunkedFeedForward

B, L, D, D_FF = 2, 11, 4, 16


def _x(length=L, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randn(B, length, D).astype(np.float32))


NUMPY_ACTIVATIONS = {
    "relu": lambda h: np.maximum(h, 0.),
    "gelu": lambda h: 0.5 * h * (1. + special.erf(h / np.sqrt(2.))),
    "gelu_new": lambda h: 0.5 * h * (1. + np.tanh(np.sqrt(2. / np.pi) * (h + 0.044715 * h ** 3))),
    "silu": lambda h: h / (1. + np.exp(-h)),
}


@pytest.mark.parametrize("activation", sorted(NUMPY_ACTIVATIONS))
def test_matches_numpy(activation):
  x = _x()
  module = ChunkedFeedForward(d_ff=D_FF, activation=activation)
  variables = module.init(jax.random.PRNGKey(0), x, deterministic=True)
  params = variables["params"]
  assert jax.tree.map(jnp.shape, params) == {"wi": {"kernel": (D, D_FF), "bias": (D_FF,)},
                                             "wo": {"kernel": (D_FF, D), "bias": (D,)}}
  # Non-zero biases so that they are exercised.
  params = jax.tree.map(lambda p: p + 0.1, params)
  got = module.apply({"params": params}, x, deterministic=True)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  h = NUMPY_ACTIVATIONS[activation](np.asarray(x, np.float64) @ p["wi"]["kernel"]
                                    + p["wi"]["bias"])
  want = h @ p["wo"]["kernel"] + p["wo"]["bias"]
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [3, 4, 11, 32])
def test_chunked_equals_unchunked(chunk_size):
  """Outputs and gradients (wrt params and input); 11 positions are not a multiple of 3 or 4."""
  x = _x(seed=1)
  full = ChunkedFeedForward(d_ff=D_FF, activation="gelu", dropout_rate=0.2, deterministic=True)
  chunked = ChunkedFeedForward(d_ff=D_FF, chunk_size=chunk_size, activation="gelu",
                               dropout_rate=0.2, deterministic=True)
  params = full.init(jax.random.PRNGKey(0), x)
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))
  np.testing.assert_allclose(np.asarray(chunked.apply(params, x)),
                             np.asarray(full.apply(params, x)), rtol=1e-6, atol=1e-6)
  g_full = jax.grad(loss(full), argnums=(0, 1))(params, x)
  g_chunk = jax.grad(loss(chunked), argnums=(0, 1))(params, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                                       atol=1e-6), g_chunk, g_full)


def test_dropout_chunked():
  x = _x(length=12, seed=2)
  module = ChunkedFeedForward(d_ff=D_FF, chunk_size=4, dropout_rate=0.5)
  params = module.init(jax.random.PRNGKey(0), x, deterministic=True)
  det = module.apply(params, x, deterministic=True)
  rngs = lambda s: {"dropout": jax.random.PRNGKey(s)}
  a = module.apply(params, x, deterministic=False, rngs=rngs(1))
  a2 = module.apply(params, x, deterministic=False, rngs=rngs(1))
  b = module.apply(params, x, deterministic=False, rngs=rngs(2))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(a2))
  assert not np.allclose(np.asarray(a), np.asarray(det))
  assert not np.allclose(np.asarray(a), np.asarray(b))
  # Chunks get different dropout masks: output dropout zeroes different entries per chunk.
  zeros = np.asarray(a == 0).reshape(B, 3, 4, D)
  assert zeros.any() and not all(np.array_equal(zeros[:, 0], zeros[:, i]) for i in (1, 2))


def test_bad_settings():
  x = _x()
  with pytest.raises(ValueError, match="activation"):
    ChunkedFeedForward(d_ff=D_FF, activation="nope").init(jax.random.PRNGKey(0), x,
                                                          deterministic=True)
  with pytest.raises(ValueError, match="chunk_size"):
    ChunkedFeedForward(d_ff=D_FF, chunk_size=0).init(jax.random.PRNGKey(0), x,
                                                     deterministic=True)


@pytest.mark.parametrize("shape, match", [
    ((L, D), r"\[batch, length, d_model\], got shape \(11, 4\); add a batch axis"),
    ((B, 0, D), "at least one position"),
])
def test_rejects_bad_input_shapes(shape, match):
  with pytest.raises(ValueError, match=match):
    ChunkedFeedForward(d_ff=D_FF).init(jax.random.PRNGKey(0), jnp.ones(shape),
                                       deterministic=True)


def _grad_step_temp_bytes(chunk_size, length=2048, d_model=16, d_ff=1024):
  module = ChunkedFeedForward(d_ff=d_ff, chunk_size=chunk_size, deterministic=True)
  x = jnp.zeros((1, length, d_model), jnp.float32)
  params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x))
  step = jax.grad(lambda p, x: jnp.sum(module.apply(p, x) ** 2), argnums=(0, 1))
  compiled = jax.jit(step).lower(params, x).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_chunking_reduces_compiled_memory():
  """The unchunked grad step keeps [2048, 1024] activations (8 MiB each); chunked only
  one [128, 1024] chunk at a time."""
  unchunked = _grad_step_temp_bytes(None)
  chunked = _grad_step_temp_bytes(128)
  assert unchunked >= 2048 * 1024 * 4
  assert chunked * 5 < unchunked, (chunked, unchunked)
