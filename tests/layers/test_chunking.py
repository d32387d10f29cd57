"""Tests for reformer_jax.layers.chunking: map_positions, zeros_after, to_bits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.layers.chunking import (check_sequence, from_bits, map_positions, to_bits,
                                          zeros_after)


def _fn(params, inputs, index):
  """Position-wise: a dense layer + tanh of the floats, scaled by an int input."""
  del index
  x, counts = inputs
  w, b = params
  return jnp.tanh(x @ w + b[None, None, :]) * counts[..., None].astype(x.dtype)


@pytest.mark.parametrize("length, chunk", [(12, 4), (13, 4), (5, 8)])
def test_map_positions_matches_whole_sequence_values_and_grads(length, chunk):
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  x = jax.random.normal(keys[0], (2, length, 3))
  counts = jax.random.randint(keys[1], (2, length), 1, 4)
  params = (jax.random.normal(keys[2], (3, 5)), jax.random.normal(keys[3], (5,)))
  cotangent = jax.random.normal(jax.random.PRNGKey(5), (2, length, 5))

  def loss(mapper):
    return lambda p, x: jnp.sum(mapper(p, x) * cotangent)

  chunked = lambda p, x: map_positions(_fn, p, (x, counts), chunk)
  whole = lambda p, x: _fn(p, (x, counts), 0)
  np.testing.assert_allclose(chunked(params, x), whole(params, x), rtol=1e-6)
  got = jax.grad(loss(chunked), argnums=(0, 1))(params, x)
  want = jax.grad(loss(whole), argnums=(0, 1))(params, x)
  jax.tree_util.tree_map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6),
                         got, want)


def test_map_positions_passes_chunk_index_and_keeps_bfloat16():
  x = jnp.arange(16., dtype=jnp.bfloat16).reshape(1, 16, 1)
  out = map_positions(lambda p, x, i: x + i.astype(x.dtype), None, x, 4)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(out[0, :, 0], np.float32),
                                np.arange(16) + np.arange(16) // 4)
  grad = jax.grad(lambda x: jnp.sum(map_positions(lambda p, x, i: 2 * x, None, x, 4)
                                    .astype(jnp.float32)))(x)
  assert grad.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(grad, np.float32), 2.)


def test_zeros_after_is_zero_unless_the_reference_is_poisoned():
  ref = jnp.ones((3, 2))
  np.testing.assert_array_equal(zeros_after((4,), jnp.float32, ref), np.zeros(4))
  assert np.isnan(np.asarray(zeros_after((4,), jnp.float32, ref.at[0, 0].set(jnp.nan)))).all()
  ints = jnp.arange(5, dtype=jnp.int32)
  np.testing.assert_array_equal(zeros_after((2,), jnp.int32, ints), [0, 0])
  poisoned = ints.at[0].set(jnp.iinfo(jnp.int32).min)
  np.testing.assert_array_equal(zeros_after((2,), jnp.int32, poisoned), [1, 1])
  # Several references: any poisoned one poisons the result.
  assert np.isnan(np.asarray(zeros_after((1,), jnp.float32, ints, ref * jnp.nan))).all()


def test_bits_round_trip():
  x = jnp.asarray([1.5, -2., 3.25], jnp.bfloat16)
  bits = to_bits(x)
  assert bits.dtype == jnp.uint16
  np.testing.assert_array_equal(np.asarray(from_bits(bits, jnp.bfloat16), np.float32),
                                np.asarray(x, np.float32))
  y = jnp.ones(3)
  assert to_bits(y) is y and from_bits(y, jnp.float32) is y


def test_check_sequence_explains_the_fix():
  check_sequence(jnp.ones((2, 3, 4)), n_heads=1, d_head=2)
  with pytest.raises(ValueError, match=r"\[batch, length, d_model\], got shape \(3, 4\); add a "
                     r"batch axis \(x\[None\]\)"):
    check_sequence(jnp.ones((3, 4)))
  with pytest.raises(ValueError, match=r"got shape \(1, 2, 3, 4\); reshape it"):
    check_sequence(jnp.ones((1, 2, 3, 4)))
  with pytest.raises(ValueError, match="at least one position"):
    check_sequence(jnp.ones((2, 0, 4)))
  with pytest.raises(ValueError, match="d_head must be >= 1, got 0"):
    check_sequence(jnp.ones((2, 3, 4)), n_heads=1, d_head=0)
