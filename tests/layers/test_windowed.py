"""Tests for reformer_jax.layers.windowed: step sizing (attention values: lsh/local
attention tests) and the one-pass rebuild + VJP of the attention blocks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.layers import windowed
from reformer_jax.layers.local_attention import LocalSelfAttention
from reformer_jax.layers.lsh_attention import LSHSelfAttention


def test_default_step_size_fits_entries_and_element_budget():
  # crime-and-punishment LSH: batch 1, 2 heads, d_model 256, chunks of 64: 4096 entries.
  assert windowed.default_chunks_per_step(1, 2, 256, 64) == windowed.STEP_ENTRIES // 64
  # enwik8 widths at batch 8 (8 heads, d_model 1024): the element budget allows 128
  # entries, less than a chunk of 256, so one chunk per step.
  assert windowed.default_chunks_per_step(8, 8, 1024, 256) == 1
  for batch, heads, features, chunk in [(8, 1, 1024, 128), (2, 4, 512, 32), (1, 1, 64, 8)]:
    steps = windowed.default_chunks_per_step(batch, heads, features, chunk)
    entries = steps * chunk
    assert steps >= 1 and entries <= windowed.STEP_ENTRIES
    assert steps == 1 or batch * heads * entries * features <= windowed.STEP_ELEMENTS


def test_group_size_divides_the_chunks():
  assert windowed.group_size(12, 5) == 4
  assert windowed.group_size(7, 64) == 7
  assert windowed.group_size(7, 3) == 1


def _attention_module(kind, **kw):
  common = dict(n_heads=2, d_head=4, chunk_len=8, causal=True, attention_dropout=0.2,
                output_dropout=0.3, position_chunk_len=16, chunks_per_step=2)
  if kind == "local":
    return LocalSelfAttention(**common, **kw)
  return LSHSelfAttention(n_buckets=4, **common, **kw)


@pytest.mark.parametrize("kind", ["local", "lsh"])
def test_rebuild_matches_forward_and_vjp(kind):
  """`rebuild=(y, dx, dy)` gives y - out and the VJP of the same (dropped-out) call."""
  batch, length, d_model = 2, 64, 6
  module = _attention_module(kind)
  keys = jax.random.split(jax.random.PRNGKey(0), 6)
  x, y, dx, dy = (jax.random.normal(k, (batch, length, d_model)) for k in keys[:4])
  norm = (1. + 0.1 * jax.random.normal(keys[4], (d_model,)), 0.1 * jnp.ones(d_model))
  rngs = {"dropout": jax.random.PRNGKey(7), "hash": jax.random.PRNGKey(8)}
  params = module.init({"params": keys[5], **rngs}, x, deterministic=True)["params"]
  call = lambda p, n, x, **kw: module.apply({"params": p}, x, deterministic=False, norm=n,
                                            rngs=rngs, **kw)
  out, vjp = jax.vjp(call, params, norm, x)
  d_params, d_norm, d_x = vjp(dy)
  got_y, got_dx, got_params, got_norm = jax.jit(
      lambda p, n, x, r: call(p, n, x, rebuild=r))(params, norm, x, (y, dx, dy))
  tol = dict(rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_y, y - out, **tol)
  np.testing.assert_allclose(got_dx, dx + d_x, **tol)
  for a, b in zip(jax.tree.leaves((got_params, got_norm)), jax.tree.leaves((d_params, d_norm))):
    np.testing.assert_allclose(a, b, **tol)
  assert jax.tree.structure(got_params) == jax.tree.structure(d_params)
  # Dropout is on in both passes: another key changes the rebuilt stream.
  other = module.apply({"params": params}, x, deterministic=False, norm=norm,
                       rngs={**rngs, "dropout": jax.random.PRNGKey(9)}, rebuild=(y, dx, dy))
  assert not np.allclose(other[0], got_y)


@pytest.mark.parametrize("kind, change", [
    ("lsh", {"n_hashes": 2}),           # rounds are combined by their normalisers
    ("local", {"length": 60}),          # not a multiple of the chunk: padded
    ("local", {"length": 8}),           # one chunk: plain attention
    ("lsh", {"stream": jnp.bfloat16}),  # on XLA:CPU 16-bit streams accumulate in float32
])
def test_rebuild_declines_what_it_cannot_do(kind, change):
  change = dict(change)
  length, stream = change.pop("length", 64), change.pop("stream", jnp.float32)
  module = _attention_module(kind, **change)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, length, 6))
  rngs = {"dropout": jax.random.PRNGKey(7), "hash": jax.random.PRNGKey(8)}
  params = module.init({"params": jax.random.PRNGKey(1), **rngs}, x, deterministic=True)
  y = x.astype(stream)
  assert module.apply(params, x, deterministic=False, rngs=rngs, rebuild=(y, y, y)) is None
