"""Tests for reformer_jax.layers.positional against plain per-position lookups."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.layers.positional import (AxialPositionalEmbedding,
                                            LearnedPositionalEmbedding, sinusoidal_positions)


def _init_apply(module, positions):
  variables = module.init(jax.random.PRNGKey(0), positions)
  return variables["params"], np.asarray(module.apply(variables, positions))


def test_axial_two_axes_matches_hf_formula():
  s0, s1 = 4, 6
  positions = jnp.arange(s0 * s1)[None].repeat(2, axis=0)
  params, out = _init_apply(AxialPositionalEmbedding((s0, s1), (3, 5), d_model=8), positions)
  w0, w1 = np.asarray(params["axis_0"]), np.asarray(params["axis_1"])
  assert w0.shape == (s0, 3) and w1.shape == (s1, 5)
  assert out.shape == (2, s0 * s1, 8)
  for p in range(s0 * s1):
    np.testing.assert_array_equal(out[1, p], np.concatenate([w0[p // s1], w1[p % s1]]))


def test_axial_three_axes():
  shape, dims = (2, 3, 4), (1, 2, 3)
  positions = jnp.asarray(np.random.RandomState(0).permutation(24)[None])
  params, out = _init_apply(AxialPositionalEmbedding(shape, dims), positions)
  w = [np.asarray(params[f"axis_{i}"]) for i in range(3)]
  for col, p in enumerate(np.asarray(positions[0])):
    want = np.concatenate([w[0][p // 12], w[1][(p // 4) % 3], w[2][p % 4]])
    np.testing.assert_array_equal(out[0, col], want)


def test_axial_shorter_sequences_and_offsets():
  module = AxialPositionalEmbedding((4, 8), (2, 6))
  full_positions = jnp.arange(32)[None]
  params, full = _init_apply(module, full_positions)
  short = np.asarray(module.apply({"params": params}, jnp.arange(5)[None]))
  np.testing.assert_array_equal(short, full[:, :5])
  offset = np.asarray(module.apply({"params": params}, jnp.arange(20, 27)[None]))
  np.testing.assert_array_equal(offset, full[:, 20:27])
  jitted = jax.jit(module.apply)({"params": params}, jnp.arange(13)[None])
  np.testing.assert_array_equal(np.asarray(jitted), full[:, :13])


def test_axial_parameter_count():
  shape, dims = (8, 16, 4), (5, 7, 4)
  params, _ = _init_apply(AxialPositionalEmbedding(shape, dims), jnp.arange(10)[None])
  n_params = sum(p.size for p in jax.tree.leaves(params))
  assert n_params == sum(s * d for s, d in zip(shape, dims)) == 8 * 5 + 16 * 7 + 4 * 4
  # The Crime-and-Punishment setting: (512, 1024) x (64, 192).
  shapes = jax.eval_shape(AxialPositionalEmbedding((512, 1024), (64, 192)).init,
                          jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
  assert sum(np.prod(s.shape) for s in jax.tree.leaves(shapes)) == 512 * 64 + 1024 * 192


def test_axial_init_std_is_the_learned_tables_and_well_below_the_token_embeddings():
  # With std 1.0 (Hugging Face's axial_norm_std) positions drowned the token embedding
  # (std 1/sqrt(d_model) = 0.125 here) and half of listops_small's seeds did not train.
  params, _ = _init_apply(AxialPositionalEmbedding((64, 64), (16, 48)), jnp.arange(4)[None])
  for name in ("axis_0", "axis_1"):
    assert 0.018 < np.std(np.asarray(params[name])) < 0.022
  tokens = nn.Embed(17, 64).init(jax.random.PRNGKey(0), jnp.zeros(1, jnp.int32))
  assert np.std(np.asarray(tokens["params"]["embedding"])) > 4 * 0.022


def test_axial_errors():
  positions = jnp.arange(10)[None]
  with pytest.raises(ValueError, match="same number of axes"):
    AxialPositionalEmbedding((4, 8), (8,)).init(jax.random.PRNGKey(0), positions)
  with pytest.raises(ValueError, match="d_model is 10"):
    AxialPositionalEmbedding((4, 8), (4, 4), d_model=10).init(jax.random.PRNGKey(0), positions)
  too_long = jnp.arange(33)[None]
  with pytest.raises(ValueError, match=r"maximum length 32.*change axial_shape"):
    AxialPositionalEmbedding((4, 8), (4, 4)).init(jax.random.PRNGKey(0), too_long)
  with pytest.raises(ValueError, match=r"\[0, 32\).*change axial_shape"):
    AxialPositionalEmbedding((4, 8), (4, 4)).init(jax.random.PRNGKey(0), positions + 30)


def test_learned_positional_embedding():
  module = LearnedPositionalEmbedding(max_len=16, d_model=3)
  positions = jnp.asarray([[0, 5, 15], [2, 2, 1]])
  params, out = _init_apply(module, positions)
  table = np.asarray(params["embedding"])
  assert table.shape == (16, 3)
  np.testing.assert_array_equal(out, table[np.asarray(positions)])
  with pytest.raises(ValueError, match="increase max_len"):
    module.apply({"params": params}, jnp.arange(17)[None])


@pytest.mark.parametrize("module", [AxialPositionalEmbedding((4, 8), (4, 4)),
                                    LearnedPositionalEmbedding(max_len=32, d_model=3)])
def test_out_of_range_positions_give_nan_under_jit_and_raise_when_concrete(module):
  positions = jnp.arange(4)[None]
  variables = module.init(jax.random.PRNGKey(0), positions)
  embed = jax.jit(lambda p: module.apply(variables, p))
  for bad in (-1, 32):
    out = np.asarray(embed(positions.at[0, 1].set(bad)))
    assert np.isnan(out[0, 1]).any() and not np.isnan(out[0, [0, 2, 3]]).any()
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
      module.apply(variables, positions.at[0, 1].set(bad))


@pytest.mark.parametrize("d_model", [6, 7])
def test_sinusoidal(d_model):
  positions = np.array([[0, 1, 7, 100]])
  got = np.asarray(sinusoidal_positions(jnp.asarray(positions), d_model))
  want = np.zeros((1, 4, d_model))
  for t, p in enumerate(positions[0]):
    for i in range(0, d_model, 2):
      freq = 1. / 10000 ** (i / d_model)
      want[0, t, i] = np.sin(p * freq)
      if i + 1 < d_model:
        want[0, t, i + 1] = np.cos(p * freq)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
