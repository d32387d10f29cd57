"""Counter-hash dropout: keep rate, independence across keys and positions, scaling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.layers.dropout import dropout, keep_mask


@pytest.mark.parametrize("keep_prob", [0.05, 0.5, 0.95])
def test_keep_fraction_matches_probability(keep_prob):
  n = 1 << 18
  mask = np.asarray(keep_mask(jax.random.PRNGKey(0), keep_prob, (4, n // 4)))
  # Binomial standard deviation is <= 0.001 at this n; allow 5 sigma.
  assert abs(mask.mean() - keep_prob) < 5 * np.sqrt(keep_prob * (1 - keep_prob) / n)


def test_masks_depend_on_key_and_look_independent():
  shape = (2, 64, 256)
  keys = [jax.random.PRNGKey(0), jax.random.PRNGKey(1), jax.random.fold_in(jax.random.PRNGKey(0), 1)]
  masks = [np.asarray(keep_mask(k, 0.5, shape)).ravel() for k in keys]
  for i in range(len(masks)):
    for j in range(i + 1, len(masks)):
      agreement = (masks[i] == masks[j]).mean()
      assert abs(agreement - 0.5) < 0.02, (i, j, agreement)
  # Same key, same mask.
  np.testing.assert_array_equal(masks[0], np.asarray(keep_mask(keys[0], 0.5, shape)).ravel())


def test_neighbouring_elements_are_uncorrelated():
  mask = np.asarray(keep_mask(jax.random.PRNGKey(7), 0.5, (1 << 16,))).astype(np.float64)
  for lag in (1, 2, 64, 256):
    corr = np.corrcoef(mask[:-lag], mask[lag:])[0, 1]
    assert abs(corr) < 0.02, (lag, corr)
  # Rows of a 2-D mask are not shifted copies of each other.
  rows = np.asarray(keep_mask(jax.random.PRNGKey(7), 0.5, (8, 1024)))
  assert (rows[0] == rows[1]).mean() < 0.6


def test_typed_and_rbg_keys():
  raw = keep_mask(jax.random.PRNGKey(3), 0.5, (1000,))
  typed = keep_mask(jax.random.wrap_key_data(jax.random.PRNGKey(3)), 0.5, (1000,))
  np.testing.assert_array_equal(raw, typed)
  rbg = keep_mask(jax.random.key(3, impl="rbg"), 0.5, (1000,))
  assert 0.4 < float(rbg.mean()) < 0.6


def test_dropout_scales_kept_values_and_is_identity_without_rng():
  x = jnp.arange(1., 4097.).reshape(64, 64)
  y = dropout(x, 0.25, jax.random.PRNGKey(5))
  kept = np.asarray(y) != 0
  np.testing.assert_allclose(np.asarray(y)[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
  assert 0.7 < kept.mean() < 0.8
  assert dropout(x, 0.25, None) is x
  assert dropout(x, 0., jax.random.PRNGKey(5)) is x
  with pytest.raises(ValueError, match=r"\[0, 1\)"):
    dropout(x, 1., jax.random.PRNGKey(5))


def test_dropout_gradient_is_the_mask_over_keep():
  x = jnp.ones((32, 32))
  rng = jax.random.PRNGKey(9)
  grad = jax.grad(lambda x: jnp.sum(dropout(x, 0.5, rng)))(x)
  expected = np.where(np.asarray(keep_mask(rng, 0.5, x.shape)), 2., 0.)
  np.testing.assert_allclose(grad, expected)


def test_rows_give_the_whole_array_mask_of_those_rows():
  """Row-keyed masks of gathered rows equal the rows of the whole array's mask."""
  rng = jax.random.PRNGKey(11)
  whole = np.asarray(keep_mask(rng, 0.5, (40, 16)))
  rows = jnp.array([[3, 39, 0], [17, 17, 5]], jnp.int32)
  got = np.asarray(keep_mask(rng, 0.5, (2, 3, 16), rows, 40))
  np.testing.assert_array_equal(got, whole[np.asarray(rows)])
  with pytest.raises(ValueError, match="rows must have shape"):
    keep_mask(rng, 0.5, (2, 3, 16), rows[:, :2], 40)


def test_rows_past_the_2_32_counter_get_their_own_masks():
  """Past 2^32 counters rows go in blocks of 2^32 // cols: block 0 keeps the masks of a
  smaller array, the same row of the next block draws other bits."""
  rng = jax.random.PRNGKey(11)
  cols, block = 256, 2 ** 24  # 2^32 // 256 rows per block
  small = np.asarray(keep_mask(rng, 0.5, (3, cols), jnp.array([0, 1, 7]), 8))
  rows = jnp.array([0, 1, 7, block, block + 1, 2 * block + 7], jnp.uint32)
  big = np.asarray(keep_mask(rng, 0.5, (6, cols), rows, 3 * block))
  np.testing.assert_array_equal(big[:3], small)
  assert 0.4 < np.mean(big[:3] != big[3:]) < 0.6
