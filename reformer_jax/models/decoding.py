"""Cached decoding of `ReformerLM`: what can be cached, for how long, and the two calls.

The reversible stack in the forward direction is `y1 = x1 + F(x2)`, `y2 = x2 + G(y1)`,
position by position except inside attention, so a new position needs from earlier ones
only what its attention can see. Each attention layer keeps exactly that in its flax
'cache' collection and owns its layout, prefill and one-token step (`layers/kv_cache.py`:
local and full attention; `layers/lsh_cache.py`: strictly causal LSH attention, with why
it equals the forward pass); `ReversibleStack` walks its blocks, and `ReformerLM.prefill` /
`ReformerLM.decode_step` add the embedding, positions and head. Here: which models the
cache reproduces (`check_cacheable`), how long it may be (`check_total_len`), the
settings it runs with (`decoding_config`, `draw_lsh_rotations`), its size
(`cache_shapes`, `cache_bytes`), and `prefill` / `decode_step` as functions of the
parameters.

The logits at position p equal those of the full model run on `total_len` tokens (any
tokens after p: it is strictly causal) with the same LSH rotations and the same
`n_buckets` (resolved once, see `decoding_config`), up to float rounding.
"""
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from reformer_jax.layers.chunking import pad_length
from reformer_jax.layers.lsh_attention import draw_rotations, resolve_n_buckets
from reformer_jax.models.config import ReformerConfig, position_limit
from reformer_jax.models.reformer_lm import ReformerLM

Cache = Dict[str, Any]  # the 'cache' collection of ReformerLM


def check_cacheable(config: ReformerConfig) -> None:
  """Raises ValueError unless cached decoding reproduces `config`'s model exactly."""
  if not config.causal:
    raise ValueError("cached decoding needs a causal language model (config.causal=True); "
                     "an encoder sees later tokens, so there is nothing to generate from")
  if "lsh" in config.layer_attention_types() and not config.strict_causal:
    raise ValueError("this model's LSH attention is not strictly causal (strict_causal=False, "
                     "e.g. a converted Hugging Face checkpoint): its chunk windows depend on "
                     "later tokens, so no cache reproduces its forward pass; generate without "
                     "the cache (use_cache=False / --no_cache)")


def decoding_config(config: ReformerConfig, total_len: int) -> ReformerConfig:
  """`config` as decoding runs it: deterministic, `n_buckets` fixed.

  `n_buckets=None` is resolved once (`resolve_n_buckets`) for the model's position limit
  (the length it was built for) or, without one, for `total_len`, so that the buckets of
  a position do not change while the sequence grows.
  """
  if total_len < 1:
    raise ValueError(f"total_len must be >= 1, got {total_len}")
  config = config.replace(deterministic=True)
  if "lsh" in config.layer_attention_types() and config.n_buckets is None:
    length = pad_length(position_limit(config) or total_len, config.lsh_chunk_len)
    config = config.replace(n_buckets=resolve_n_buckets(None, length, config.lsh_chunk_len))
  return config


def draw_lsh_rotations(config: ReformerConfig, seed: int) -> Optional[Tuple[jnp.ndarray, ...]]:
  """One rotation array per LSH layer drawn from `seed` (None without LSH layers);
  `config.n_buckets` must be resolved (`decoding_config`)."""
  n_lsh = config.layer_attention_types().count("lsh")
  if not n_lsh:
    return None
  keys = jax.random.split(jax.random.PRNGKey(seed), n_lsh)
  return tuple(draw_rotations(k, config.n_heads, config.d_head, config.n_hashes,
                              config.n_buckets) for k in keys)


def check_total_len(config: ReformerConfig, total_len: int) -> None:
  """Raises ValueError if `total_len` positions do not fit the position table."""
  limit = position_limit(config)
  if limit is not None and total_len > limit:
    raise ValueError(f"{total_len} positions (prompt + new tokens) exceed the model's "
                     f"position table of {limit}; generate fewer tokens or shorten the prompt")


def cache_shapes(config: ReformerConfig, batch: int, total_len: int) -> Cache:
  """Shapes and dtypes (`jax.ShapeDtypeStruct`) of the cache for `batch` sequences of up
  to `total_len` positions; nothing is computed or allocated."""
  config = decoding_config(config, total_len)

  def prefilled():
    tokens = jnp.zeros((batch, 1), jnp.int32)
    return ReformerLM(config).init(
        {"params": jax.random.PRNGKey(0)}, tokens, jnp.ones((batch,), jnp.int32), total_len,
        draw_lsh_rotations(config, 0), method=ReformerLM.prefill)["cache"]

  return jax.eval_shape(prefilled)


def cache_bytes(cache: Cache) -> int:
  """Bytes held by a cache (or its `cache_shapes`)."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))


def prefill(config: ReformerConfig, params, tokens: jnp.ndarray, lengths: jnp.ndarray,
            total_len: int, lsh_rotations=None) -> Tuple[jnp.ndarray, Cache]:
  """Runs the prompts and fills the caches (`ReformerLM.prefill`).

  Args:
    config: from `decoding_config` (checked by `check_cacheable`).
    params: `ReformerLM` parameters.
    tokens: int `[batch, P]` prompts, right-padded (anything after `lengths`).
    lengths: int `[batch]` prompt lengths, 1 .. P.
    total_len: positions the caches hold (>= P); a static int.
    lsh_rotations: one `[n_heads, d_head, n_hashes, rot]` array for every LSH layer or a
      sequence with one per LSH layer (see `draw_lsh_rotations`).

  Returns:
    `(logits [batch, vocab] of each prompt's last position, cache)`.
  """
  check_total_len(config, total_len)
  if tokens.shape[1] > total_len:
    raise ValueError(f"prompts of {tokens.shape[1]} tokens do not fit total_len={total_len}")
  logits, variables = ReformerLM(config).apply(
      {"params": params}, tokens, lengths, total_len, lsh_rotations,
      method=ReformerLM.prefill, mutable=["cache"])
  return logits, variables["cache"]


def decode_step(config: ReformerConfig, params, tokens: jnp.ndarray, positions: jnp.ndarray,
                cache: Cache, lsh_rotations=None) -> Tuple[jnp.ndarray, Cache]:
  """One new token per sequence: `tokens`, `positions` int `[batch]` -> `(logits [batch,
  vocab], cache)`. Each sequence's earlier positions must be in `cache` (`prefill`)."""
  logits, variables = ReformerLM(config).apply(
      {"params": params, "cache": cache}, tokens, positions, lsh_rotations,
      method=ReformerLM.decode_step, mutable=["cache"])
  return logits, variables["cache"]
