"""Row softmax against the library's: values, masked rows, gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.layers.chunking import MASK_VALUE, SELF_MASK_VALUE
from reformer_jax.layers.softmax import row_max, row_sum, softmax_lse


def _logits(shape, seed=0):
  logits = 3. * jax.random.normal(jax.random.PRNGKey(seed), shape)
  # Replacement-masked entries as the attentions make them.
  masked = jax.random.bernoulli(jax.random.PRNGKey(seed + 1), 0.3, shape)
  return jnp.where(masked, MASK_VALUE, logits)


@pytest.mark.parametrize("width", [1, 7, 12, 128, 130])
def test_row_max_and_sum_match_reductions(width):
  x = _logits((3, 5, width))
  np.testing.assert_array_equal(row_max(x), jnp.max(x, axis=-1, keepdims=True))
  y = jax.random.normal(jax.random.PRNGKey(2), (3, 5, width))
  np.testing.assert_allclose(row_sum(y), jnp.sum(y, axis=-1, keepdims=True), rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("width", [7, 128])
def test_softmax_lse_matches_library(width):
  x = _logits((2, 4, width))
  probs, lse = softmax_lse(x)
  np.testing.assert_allclose(probs, jax.nn.softmax(x, axis=-1), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(lse, jax.nn.logsumexp(x, axis=-1), rtol=1e-6)
  np.testing.assert_allclose(jnp.sum(probs, axis=-1), 1., rtol=1e-6)


def test_fully_masked_and_self_masked_rows():
  # A row with every key masked is uniform (as Hugging Face's); a row whose only
  # unmasked key is the self-masked one puts all its weight there.
  x = jnp.full((2, 8), MASK_VALUE).at[1, 3].set(SELF_MASK_VALUE)
  probs, lse = softmax_lse(x)
  np.testing.assert_allclose(probs[0], np.full(8, 1 / 8), rtol=1e-6)
  np.testing.assert_allclose(probs[1], np.eye(8)[3], atol=1e-6)
  np.testing.assert_allclose(lse, jax.nn.logsumexp(x, axis=-1), rtol=1e-6)


def test_gradient_matches_autodiff_of_the_plain_formula():
  x = _logits((2, 3, 16), seed=3)
  w_probs = jax.random.normal(jax.random.PRNGKey(4), x.shape)
  w_lse = jax.random.normal(jax.random.PRNGKey(5), x.shape[:-1])

  def plain(x):
    lse = jax.nn.logsumexp(x, axis=-1)
    return jnp.exp(x - lse[..., None]), lse

  def loss(fn, x):
    probs, lse = fn(x)
    return jnp.sum(probs * w_probs) + jnp.sum(lse * w_lse)

  got = jax.grad(lambda x: loss(softmax_lse, x))(x)
  want = jax.grad(lambda x: loss(plain, x))(x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Only probs used: the lse cotangent arrives as zeros.
  got = jax.grad(lambda x: jnp.sum(softmax_lse(x)[0] * w_probs))(x)
  want = jax.grad(lambda x: jnp.sum(plain(x)[0] * w_probs))(x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
