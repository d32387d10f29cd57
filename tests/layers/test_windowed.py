"""Tests for reformer_jax.layers.windowed: step sizing (attention values: lsh/local
attention tests) and the one-pass rebuild + VJP of the attention blocks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.layers import windowed, xla_cpu
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


def test_rebuild_of_16bit_streams_accumulates_in_place():
  """bfloat16 streams (where `float32_accumulation` is off: accelerators) are rebuilt and
  differentiated in place in bfloat16, as close to the float32 computation as the unfused
  bfloat16 path (VJP of the call, its float32 input gradient rounded once). LSH: two heads
  add to a row in different steps (local attention: tests/layers/test_xla_cpu.py's LM)."""
  batch, length, d_model = 1, 64, 6
  module = _attention_module("lsh", dtype=jnp.bfloat16)
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  x, y, dx, dy = (jax.random.normal(k, (batch, length, d_model)).astype(jnp.bfloat16)
                  for k in keys[:4])
  rngs = {"dropout": jax.random.PRNGKey(7), "hash": jax.random.PRNGKey(8)}
  params = module.init({"params": keys[4], **rngs}, x, deterministic=True)["params"]
  call = lambda m, p, x, **kw: m.apply({"params": p}, x, deterministic=False, rngs=rngs, **kw)
  with xla_cpu.forced(float32_accumulation=False):
    got = jax.jit(lambda p, x, r: call(module, p, x, rebuild=r))(params, x, (y, dx, dy))
  assert all(t.dtype == jnp.bfloat16 for t in got[:2])
  # The float32 computation on the same values, and the unfused bfloat16 path.
  up = lambda t: jax.tree.map(lambda a: a.astype(jnp.float32), t)
  wide = module.clone(dtype=jnp.float32)
  out, vjp = jax.vjp(lambda p, x: call(wide, p, x), up(params), up(x))
  d_params, d_x = vjp(up(dy))
  want = (up(y) - out, up(dx) + d_x, d_params)
  out, vjp = jax.vjp(lambda p, x: call(module, p, x), params, x)
  d_params, d_x = vjp(dy)
  unfused = (y - out, dx + d_x, d_params)
  for name, *trees in zip(("y", "dx", "params"), got[:3], unfused, want):
    for fused, plain, w in zip(*map(jax.tree.leaves, trees)):
      scale = float(jnp.max(jnp.abs(w)))
      fused_err, unfused_err = (float(jnp.max(jnp.abs(up(t) - w))) / scale
                                for t in (fused, plain))
      assert fused_err <= 1.5 * unfused_err + 1e-3, (name, fused_err, unfused_err)
