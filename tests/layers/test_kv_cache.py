"""Cached decoding of local and full attention (and the decode modes) against their forward pass."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.layers import FullSelfAttention, LocalSelfAttention
from reformer_jax.layers.kv_cache import Prefill, Step

D_MODEL, CACHE_LEN = 8, 14


def random_params(layer, x, **kwargs):
  """`{'params': ...}` of `layer` on `x`, normal with std 0.5 (no compiled init)."""
  shapes = jax.eval_shape(lambda: layer.init(jax.random.PRNGKey(0), x, **kwargs))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype),
                      shapes)


def decoded_outputs(layer, lengths, **kwargs):
  """`(cached, forward, cache)`: outputs `[2, CACHE_LEN, d_model]` of `layer` on random
  inputs, the prefill's at the prompts' real positions and one step's at each later
  position (NaN elsewhere in both), the forward pass's over the whole inputs, and the
  cache the prefill wrote."""
  x = jax.random.normal(jax.random.PRNGKey(1), (len(lengths), CACHE_LEN, D_MODEL))
  apply = jax.jit(lambda variables, x, decode=None: layer.apply(
      variables, x, decode=decode, mutable=["cache"], **kwargs))
  params = random_params(layer, x, **kwargs)
  forward = np.asarray(apply(params, x)[0])
  lengths = jnp.asarray(lengths, jnp.int32)
  prompt = int(lengths.max())
  out, state = apply(params, x[:, :prompt], Prefill(lengths, CACHE_LEN))
  prefill_cache = state["cache"]
  cached = np.full(forward.shape, np.nan, np.float32)
  real = np.arange(prompt)[None] < np.asarray(lengths)[:, None]
  cached[:, :prompt][real] = np.asarray(out)[real]
  rows = np.arange(x.shape[0])
  for i in range(CACHE_LEN - prompt):
    positions = lengths + i
    out, state = apply({**params, **state}, x[rows, positions][:, None], Step(positions))
    cached[rows, positions] = out[:, 0]
  return cached, np.where(np.isnan(cached), np.nan, forward), prefill_cache


@pytest.mark.parametrize("layer, slots", [
    (LocalSelfAttention(n_heads=2, d_head=4, chunk_len=3, n_chunks_before=1, n_chunks_after=1,
                        causal=True, deterministic=True), 6),
    (FullSelfAttention(n_heads=2, d_head=4, causal=True, deterministic=True), CACHE_LEN),
    (FullSelfAttention(n_heads=2, d_head=4, causal=True, shared_qk=True, deterministic=True),
     CACHE_LEN),
], ids=["local_ring_wraps", "full", "shared_qk_full"])
def test_prefill_and_steps_equal_the_forward_pass(layer, slots):
  cached, forward, cache = decoded_outputs(layer, lengths=[2, 7])
  # Compared: positions 0 .. 8 of the first sequence (2 in the prompt, 7 steps), all 14 of
  # the second (7 and 7).
  assert np.isfinite(cached).sum() == (9 + 14) * D_MODEL
  np.testing.assert_allclose(cached, forward, atol=1e-5, rtol=0)
  # Local attention's ring holds its window, (1 + n_chunks_before) * chunk_len positions;
  # position p of a prompt sits in slot p mod slots (-1: empty).
  assert cache["k"].shape == cache["v"].shape == (2, 2, slots, 4)
  latest = [max([p for p in range(7) if p % slots == s], default=-1) for s in range(slots)]
  np.testing.assert_array_equal(cache["pos"][1], latest)


def _x(length=3):
  return jnp.zeros((2, length, D_MODEL))


@pytest.mark.parametrize("layer, decode, message", [
    (LocalSelfAttention(n_heads=2, d_head=4, deterministic=True), Step(jnp.array([3, 3])),
     "causal attention"),
    (FullSelfAttention(n_heads=2, d_head=4, causal=True, attention_dropout=0.1,
                       deterministic=False), Prefill(jnp.array([3, 3]), 8), "deterministic=True"),
    (FullSelfAttention(n_heads=2, d_head=4, causal=True, deterministic=True),
     Prefill(jnp.array([3, 3]), 2), "do not fit cache_len=2"),
    (FullSelfAttention(n_heads=2, d_head=4, causal=True, deterministic=True),
     Step(jnp.array([3, 3])), "one position per sequence"),
    (FullSelfAttention(n_heads=2, d_head=4, causal=True, deterministic=True), "step",
     "kv_cache.Prefill or kv_cache.Step"),
])
def test_bad_decoding_gets_one_clear_error(layer, decode, message):
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(lambda: layer.init({"params": jax.random.PRNGKey(0),
                                       "dropout": jax.random.PRNGKey(1)}, _x(), decode=decode))


def test_a_step_without_a_prefill_says_to_prefill():
  layer = FullSelfAttention(n_heads=2, d_head=4, causal=True, deterministic=True)
  params = random_params(layer, _x())
  with pytest.raises(ValueError, match=r"no cache to step from: run it with decode=Prefill"):
    jax.eval_shape(lambda: layer.apply(params, _x(1), decode=Step(jnp.array([0, 0])),
                                       mutable=["cache"]))
