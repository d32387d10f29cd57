"""Inverted dropout with a counter-hash mask.

The mask bit of element i is `fmix32(fmix32(i + s0) + s1) < keep_prob * 2^32`, where
`fmix32` is MurmurHash3's 32-bit finaliser and `(s0, s1)` are derived from the key's data.
A reversible Reformer regenerates every mask two or three times per step (forward, the
backward rebuild of the layer input, and the recomputation inside the VJP), so the mask must be
cheap: this costs ~10 integer operations per element and fuses into the consumer, where
`jax.random.bernoulli` runs threefry's 20 rounds and materialises the bits on CPU. The masks
are deterministic functions of (key, element index), like any JAX random draw, but are not
the same bits `jax.random.bernoulli` would give: this is a deliberate difference from trax.
"""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

_GOLDEN = 0x9E3779B9


def _fmix32(h: jnp.ndarray) -> jnp.ndarray:
  """MurmurHash3's finaliser: a bijection of uint32 with full avalanche."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _seeds(rng: jax.Array) -> tuple:
  """Two uint32 seeds from a raw (`uint32[2]`, `uint32[4]`) or typed PRNG key."""
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  words = jnp.ravel(rng).astype(jnp.uint32)
  s0, s1 = jnp.uint32(0x243F6A88), jnp.uint32(0x85A308D3)
  for i in range(words.shape[0]):
    if i % 2 == 0:
      s0 = _fmix32(s0 ^ (words[i] + jnp.uint32(_GOLDEN)))
    else:
      s1 = _fmix32(s1 ^ (words[i] + jnp.uint32(_GOLDEN)))
  return s0, _fmix32(s1 ^ s0)


def keep_mask(rng: jax.Array, keep_prob: float, shape: Sequence[int],
              rows: Optional[jnp.ndarray] = None, n_rows: Optional[int] = None
              ) -> jnp.ndarray:
  """bool `shape`, True with probability `keep_prob` independently per element.

  Element `(r, j)` (`r` a row: all but the last axis, flattened) draws counter
  `r * shape[-1] + j`. `rows` (int, shape `shape[:-1]`, values < `n_rows`) replaces `r`
  with a global row id, so that rows computed apart (chunks, gathered positions) get the
  masks they have in the whole array. Past 2^32 counters (e.g. 16M positions x 256
  features) rows go in blocks of `2^32 // shape[-1]`: counters restart in each block and the
  block's index is mixed into the second hash (block 0, every smaller array, as above).
  """
  cols = shape[-1] if shape else 1
  size = 1
  for d in shape:
    size *= d
  if rows is not None:
    if n_rows is None or rows.shape != tuple(shape[:-1]):
      raise ValueError(f"rows must have shape {tuple(shape[:-1])} (got {rows.shape}) and "
                       "come with their bound n_rows")
    size = n_rows * cols
  s0, s1 = _seeds(rng)
  # index + s0 as (row * cols + s0)[:, None] + col[None, :]: the seed enters before the
  # full-size broadcast, so XLA cannot hoist a materialised index array out of loops.
  if rows is None:
    rows = jax.lax.iota(jnp.uint32, size // cols)
  rows = jnp.ravel(rows).astype(jnp.uint32)
  block_rows = 2 ** 32 // cols
  block_salt = None
  if size > block_rows * cols:  # counters past 2^32: rows in blocks, counters per block
    block_salt = (rows // jnp.uint32(block_rows)) * jnp.uint32(_GOLDEN)
    rows = rows % jnp.uint32(block_rows)
  rows = rows * jnp.uint32(cols) + s0
  hashed = _fmix32(rows[:, None] + jax.lax.iota(jnp.uint32, cols)[None, :])
  if block_salt is not None:
    hashed = hashed + block_salt[:, None]
  bits = _fmix32(hashed.reshape(shape) + s1)
  threshold = min(int(round(keep_prob * 2. ** 32)), 2 ** 32 - 1)
  return bits < jnp.uint32(threshold)


def dropout(x: jnp.ndarray, rate: float, rng: Optional[jax.Array],
            rows: Optional[jnp.ndarray] = None, n_rows: Optional[int] = None) -> jnp.ndarray:
  """Inverted dropout of `x` (any shape); identity when `rng` is None or `rate` is 0.

  `rows`, `n_rows`: global row ids of `x`'s rows (see `keep_mask`).
  """
  if not 0. <= rate < 1.:
    raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
  if rng is None or rate == 0.:
    return x
  keep = keep_mask(rng, 1. - rate, x.shape, rows, n_rows)
  return jnp.where(keep, x / (1. - rate), jnp.zeros((), x.dtype))
