"""Cached decoding of strictly causal LSH attention against its forward pass."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.layers import LSHSelfAttention, draw_rotations
from reformer_jax.layers.kv_cache import Prefill
from tests.layers.test_kv_cache import CACHE_LEN, D_MODEL, decoded_outputs


def _lsh(**changes):
  settings = dict(n_heads=2, d_head=4, n_hashes=3, n_buckets=(2, 4), chunk_len=3,
                  n_chunks_before=2, causal=True, correct_duplicates=True, deterministic=True)
  return LSHSelfAttention(**(settings | changes))


def _rotations(layer):
  return draw_rotations(jax.random.PRNGKey(2), layer.n_heads, layer.d_head, layer.n_hashes,
                        layer.n_buckets)


@pytest.mark.parametrize("layer", [_lsh(), _lsh(n_hashes=2, chunk_len=16)],
                         ids=["bucket_rings", "generation_within_one_chunk"])
def test_prefill_and_steps_equal_the_forward_pass(layer):
  # Prompts within one chunk (3 <= chunk_len): with rings, the prefill pads them past it.
  cached, forward, cache = decoded_outputs(layer, [2, 3], rotations=_rotations(layer))
  assert np.isfinite(cached).sum() == (13 + 14) * D_MODEL  # positions 0 .. 12, 0 .. 13
  np.testing.assert_allclose(cached, forward, atol=1e-5, rtol=0)
  assert cache["k"].shape == cache["v"].shape == (2, 2, CACHE_LEN, 4)
  if "ring" in cache:  # [b, h, rounds, buckets, W + 1], W = n_chunks_before * chunk_len
    assert cache["ring"].shape == (2, 2, 3, 8, 2 * 3 + 1)
    np.testing.assert_array_equal(cache["count"].sum(axis=-1), [[[2] * 3] * 2, [[3] * 3] * 2])
  else:
    assert layer.chunk_len >= CACHE_LEN and set(cache) == {"k", "v", "pos"}


@pytest.mark.parametrize("changes, rotations, message", [
    (dict(strict_causal=False), True, "strictly causal"),
    (dict(n_buckets=None), False, "fixed n_buckets"),
    ({}, False, "given rotations="),
])
def test_refuses_what_no_cache_reproduces(changes, rotations, message):
  layer = _lsh(**changes)
  kwargs = dict(rotations=_rotations(layer)) if rotations else {}
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(lambda: layer.init(
        {"params": jax.random.PRNGKey(0), "hash": jax.random.PRNGKey(1)},
        jnp.zeros((2, 3, D_MODEL)), decode=Prefill(jnp.array([3, 3]), CACHE_LEN), **kwargs))
