"""Cached decoding against the full (uncached) forward pass of ReformerLM."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.models import ReformerConfig, ReformerLM
from reformer_jax.models import decoding

# Chunks of 4, 2 heads of 4: rings wrap and buckets overflow their windows within 40 tokens.
BASE = ReformerConfig(vocab_size=16, d_model=16, d_ff=32, n_heads=2, d_head=4, n_layers=2,
                      attention_types=("local", "lsh"), max_len=64, lsh_chunk_len=4,
                      local_chunk_len=4, n_buckets=4, dropout_rate=0., attention_dropout=0.)
TOTAL = 40


def _params(model, tokens, rotations, seed):
  """Random parameters of `model` (normal, std 0.5; no compiled init)."""
  shapes = jax.eval_shape(model.init, {"params": jax.random.PRNGKey(0)}, tokens,
                          lsh_rotations=rotations)["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype),
                      shapes)


def _run(config, lengths, total=TOTAL, seed=0):
  """(cached logits, full-model logits) `[batch, total, vocab]` at the decoded positions
  (the last prompt position onwards; elsewhere NaN in both)."""
  config = decoding.decoding_config(config, total)
  rotations = decoding.draw_lsh_rotations(config, seed)
  model = ReformerLM(config)
  tokens = jax.random.randint(jax.random.PRNGKey(seed), (len(lengths), total), 0,
                              config.vocab_size)
  params = _params(model, tokens, rotations, seed)
  full = np.asarray(jax.jit(model.apply)({"params": params}, tokens,
                                         lsh_rotations=rotations), np.float32)
  lengths = jnp.asarray(lengths, jnp.int32)
  prompt = int(lengths.max())
  logits, cache = jax.jit(functools.partial(decoding.prefill, config, total_len=total))(
      params, tokens[:, :prompt], lengths, lsh_rotations=rotations)
  step = jax.jit(functools.partial(decoding.decode_step, config))
  cached = np.full(full.shape, np.nan, np.float32)
  rows = np.arange(len(lengths))
  cached[rows, lengths - 1] = logits
  for i in range(total - prompt):
    positions = lengths + i
    logits, cache = step(params, tokens[rows, positions], positions, cache,
                         lsh_rotations=rotations)
    cached[rows, positions] = logits
  return cached, np.where(np.isnan(cached), np.nan, full)


@pytest.mark.parametrize("changes", [
    dict(attention_types=("local",), n_layers=1, local_n_chunks_before=2,
         local_n_chunks_after=1),
    dict(attention_types=("lsh",), n_layers=1, positional="learned"),
    dict(attention_types=("lsh",), n_layers=1, n_hashes=4, n_buckets=(2, 4)),
    dict(attention_types=("local", "lsh", "full", "shared_qk_full"), n_layers=4, n_hashes=2,
         ff_chunk_size=3, positional="sinusoidal", n_buckets=None),
    dict(attention_types=("lsh",), n_layers=1, n_hashes=3, correct_duplicates=True,
         n_buckets=2, lsh_n_chunks_before=2),
], ids=["local_only_wider_window", "lsh_only_learned", "lsh_4_rounds_factorised",
        "mixed_chunked_ff_sinusoidal_default_buckets", "duplicate_correction"])
def test_cached_logits_equal_the_full_forward(changes):
  cached, full = _run(BASE.replace(**changes), lengths=[3, 9, 14])
  np.testing.assert_allclose(cached, full, atol=1e-5, rtol=0)


def test_a_generation_within_one_lsh_chunk_attends_to_everything():
  # The forward pass of <= lsh_chunk_len tokens uses plain shared-QK attention, no hashing.
  cached, full = _run(BASE.replace(lsh_chunk_len=16), lengths=[2, 5], total=12)
  np.testing.assert_allclose(cached, full, atol=1e-5, rtol=0)


def test_cached_logits_equal_the_full_model_on_the_sequence_so_far():
  config = decoding.decoding_config(BASE, TOTAL)
  cached, _ = _run(config, lengths=[6])
  rotations = decoding.draw_lsh_rotations(config, 0)
  model = ReformerLM(config)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (1, TOTAL), 0, config.vocab_size)
  params = {"params": _params(model, tokens, rotations, 0)}
  length = 23   # longer than one LSH chunk: the forward pass hashes
  logits = jax.jit(model.apply)(params, tokens[:, :length], lsh_rotations=rotations)
  np.testing.assert_allclose(cached[0, length - 1], logits[0, -1], atol=1e-5, rtol=0)


def test_bfloat16():
  config = BASE.replace(dtype=jnp.bfloat16, stream_dtype=jnp.bfloat16, n_hashes=2)
  cached, full = _run(config, lengths=[5, 11])
  # bfloat16 keeps 8 bits: logits up to ~5 differ by at most one of its steps there
  # (measured 0.031 = 2^-5, the spacing in [4, 8)).
  np.testing.assert_allclose(cached, full, atol=0.05, rtol=0)


def test_the_cache_size_is_flat_in_length_for_local_layers():
  config = BASE.replace(attention_types=("local",), n_layers=1)
  short, long = (decoding.cache_shapes(config, 2, n) for n in (16, 4096))
  assert jax.tree.map(lambda x: x.shape, short) == jax.tree.map(lambda x: x.shape, long)
  assert decoding.cache_bytes(short) == 2 * 2 * 2 * 8 * 4 * 4 + 2 * 8 * 4


def test_refuses_models_it_cannot_reproduce():
  with pytest.raises(ValueError, match="not strictly causal.*use_cache=False"):
    decoding.check_cacheable(BASE.replace(strict_causal=False))
  with pytest.raises(ValueError, match="causal language model"):
    decoding.check_cacheable(BASE.replace(causal=False))
  decoding.check_cacheable(BASE.replace(strict_causal=False, attention_types=("local",)))
  with pytest.raises(ValueError, match="exceed the model's position table of 64"):
    decoding.check_total_len(BASE, 65)


def test_n_buckets_resolved_once_from_the_position_table():
  assert decoding.decoding_config(BASE.replace(n_buckets=None), 10).n_buckets == (4, 8)
  no_table = BASE.replace(n_buckets=None, positional="sinusoidal")
  assert decoding.decoding_config(no_table, 10).n_buckets == 4   # from the 12 padded positions
  assert decoding.decoding_config(BASE, 10).deterministic
