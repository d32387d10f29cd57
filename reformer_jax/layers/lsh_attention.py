"""LSH self-attention (Reformer, Kitaev et al. 2020): shared-QK attention within hash buckets.

Each hashing round assigns every position a bucket by a random rotation of its (shared)
query/key vector; positions are stably sorted by bucket (ties by position), the sorted
sequence of all rounds is cut into chunks of `chunk_len` and each chunk attends to itself
and its neighbour chunks, wrapping around as in trax / Hugging Face. Per query and round
the softmax normaliser (logsumexp) is kept, and the rounds are combined with weights
`softmax_r(lse_r)`. Cost is O(n_hashes * L * chunk_len): no `[L, L]` array is formed; the
per-chunk logits are `[batch, heads, n_hashes * L / chunk_len, chunk_len, window]` with
`window = (1 + n_chunks_before + n_chunks_after) * chunk_len`.

Conventions follow Hugging Face's `LSHSelfAttention`: keys are the length-normalised
queries `q * rsqrt(mean(q^2) + 1e-6) / sqrt(d_head)`, hashing uses the unnormalised
vectors, padding tokens go to an extra bucket after the real ones, masked logits are
replaced by -1e9, a query's own position by -1e5, and causality is by original positions.
"""
import functools
import math
import numbers
from typing import Callable, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax.layers import xla_cpu
from reformer_jax.layers.chunking import (MASK_VALUE, SELF_MASK_VALUE, check_sequence,
                                          chunk_positions, map_positions, pad_axis,
                                          replace_masked, split_chunks)
from reformer_jax.layers.dense import (FROM_HEADS, TO_HEADS, DenseParams, dense, layer_norm,
                                       output_projection, project_heads)
from reformer_jax.layers.dropout import dropout
from reformer_jax.layers.full_attention import full_attention, normalize_shared_keys
from reformer_jax.layers.kv_cache import (RING, DecodeMode, Prefill, Step, cached_step,
                                          check_decodable, fill_ring, ring_attention,
                                          write_cache)
from reformer_jax.layers.lsh_cache import (BUCKET_RINGS, bucket_ring_attention,
                                           fill_bucket_rings)
from reformer_jax.layers.softmax import softmax_lse
from reformer_jax.layers.windowed import (can_rebuild, default_chunks_per_step, query_chunks,
                                          rebuild_attention, window_keys,
                                          windowed_attention)

NBuckets = Union[int, Sequence[int]]


def _bucket_factors(n_buckets: NBuckets) -> Tuple[int, ...]:
  """`n_buckets` (int or factor list) as a tuple of validated even factors."""
  factors = (n_buckets,) if isinstance(n_buckets, numbers.Integral) else n_buckets
  if (not isinstance(factors, (list, tuple)) or not factors
      or any(isinstance(f, bool) or not isinstance(f, numbers.Integral) for f in factors)):
    raise ValueError(f"n_buckets must be an even int or a non-empty list of even ints "
                     f"(factorised buckets), got {n_buckets!r}")
  factors = tuple(int(f) for f in factors)
  if any(f < 2 or f % 2 for f in factors):
    raise ValueError(f"every n_buckets factor must be even and >= 2 (a rotation R gives "
                     f"buckets argmax([xR; -xR])), got {n_buckets!r}; use e.g. "
                     f"{[max(2, f + f % 2) for f in factors]}")
  return factors


def resolve_n_buckets(n_buckets: Optional[NBuckets], length: int,
                      chunk_len: int) -> Union[int, Tuple[int, ...]]:
  """The number of buckets to use for sequences of `length` (already padded).

  A given `n_buckets` is validated and returned (an int, or a tuple of factors). None gives
  Hugging Face's default: the power of two at or below `2 * length // chunk_len` (at least
  2), factorised into two powers of two when it exceeds `2 * max(sqrt(length // chunk_len),
  chunk_len)`. HF computes that limit from `max_position_embeddings`; here the length
  itself is used.
  """
  if n_buckets is not None:
    factors = _bucket_factors(n_buckets)
    return factors[0] if isinstance(n_buckets, numbers.Integral) else factors
  if chunk_len < 1:
    raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
  power = max(1, (2 * (length // chunk_len)).bit_length() - 1)
  limit = 2 * max(int((length // chunk_len) ** 0.5), chunk_len)
  if 2 ** power > limit:
    return (2 ** (power // 2), 2 ** (power - power // 2))
  return 2 ** power


def draw_rotations(rng: jax.Array, n_heads: int, d_head: int, n_hashes: int,
                   n_buckets: NBuckets) -> jnp.ndarray:
  """Standard-normal rotations `[n_heads, d_head, n_hashes, sum(factors) // 2]` (float32)."""
  if n_buckets is None:
    raise ValueError("draw_rotations needs a concrete n_buckets; resolve None first with "
                     "resolve_n_buckets(None, padded_length, chunk_len)")
  if n_hashes < 1:
    raise ValueError(f"n_hashes must be >= 1, got {n_hashes}")
  rot = sum(_bucket_factors(n_buckets)) // 2
  return jax.random.normal(rng, (n_heads, d_head, n_hashes, rot), jnp.float32)


def _check_rotations(rotations: jnp.ndarray, n_heads: int, d_head: int,
                     factors: Tuple[int, ...]) -> int:
  """Validates the rotation shape against the heads and buckets; returns n_hashes."""
  rot = sum(factors) // 2
  shape = tuple(rotations.shape)
  if len(shape) != 4 or shape[0] != n_heads or shape[1] != d_head or shape[3] != rot \
      or shape[2] < 1:
    raise ValueError(f"rotations must be [n_heads, d_head, n_hashes, sum(n_buckets factors)"
                     f" // 2] = [{n_heads}, {d_head}, n_hashes, {rot}], got {shape}; draw "
                     f"them with draw_rotations(rng, n_heads, d_head, n_hashes, n_buckets)")
  return shape[2]


# Widths above this are halved with elementwise comparisons before the final reduction.
_ARGMAX_TREE_WIDTH = 8


def _signed_argmax(part: jnp.ndarray) -> jnp.ndarray:
  """`argmax(concatenate([part, -part], -1), -1)` as int32 `[...]` of `part` `[..., w]`
  (on CPU `_halving_signed_argmax`)."""
  return xla_cpu.select("signed_argmax", _halving_signed_argmax, _plain_signed_argmax, part)


def _plain_signed_argmax(part):
  return jnp.argmax(jnp.concatenate([part, -part], -1), -1).astype(jnp.int32)


def _halving_signed_argmax(part: jnp.ndarray) -> jnp.ndarray:
  """`_signed_argmax` without the concatenation, and with XLA:CPU's slow variadic row
  reduction only over the last few columns: the entry of largest `|part|` (bucket `i` where `part[i] >= 0`, else
  `w + i`), found by halving the row with elementwise comparisons. Ties go to the smaller
  bucket, as argmax's first maximum; NaN counts as the largest value (unless an infinity
  comes first).
  """
  width = part.shape[-1]
  value = jnp.where(jnp.isnan(part), jnp.inf, jnp.abs(part))
  columns = jnp.arange(width, dtype=jnp.int32).reshape((1,) * (part.ndim - 1) + (width,))
  index = jnp.where(part < 0, width, 0) + columns
  while value.shape[-1] > _ARGMAX_TREE_WIDTH and value.shape[-1] % 2 == 0:
    half = value.shape[-1] // 2
    (a, b), (ia, ib) = ((t[..., :half], t[..., half:]) for t in (value, index))
    take_b = (b > a) | ((b == a) & (ib < ia))
    value, index = jnp.where(take_b, b, a), jnp.where(take_b, ib, ia)
  top = jnp.max(value, axis=-1, keepdims=True)
  return jnp.min(jnp.where(value == top, index, 2 * width), axis=-1)


def _hash_rows(x: jnp.ndarray, rotations: jnp.ndarray, factors: Tuple[int, ...]
               ) -> jnp.ndarray:
  """Buckets int32 `[b, L, h, n_hashes]` in [0, prod(factors)) of `x` `[b, L, h, d]`.

  float32 math; each head's rotation is one 2-D matrix product over the positions, whose
  output (positions major) feeds `_signed_argmax` without a transposing copy.
  """
  batch, length, n_heads, d = x.shape
  n_hashes, width = rotations.shape[2:]
  x = jax.lax.stop_gradient(x).astype(jnp.float32)
  heads = []
  for i in range(n_heads):
    rotated = dense(x[:, :, i], rotations[i].astype(jnp.float32).reshape(d, -1))
    rotated = rotated.reshape(batch, length, n_hashes, width)
    buckets, start, scale = 0, 0, 1
    for f in factors:
      buckets = buckets + scale * _signed_argmax(rotated[..., start:start + f // 2])
      start, scale = start + f // 2, scale * f
    heads.append(buckets)
  return jnp.stack(heads, axis=2)


def hash_vectors(qk: jnp.ndarray, rotations: jnp.ndarray, n_buckets: NBuckets) -> jnp.ndarray:
  """LSH buckets of `qk` `[batch, length, n_heads, d_head]` -> `[batch, n_heads, n_hashes, length]`.

  Per head and round, `bucket = argmax([xR; -xR])`; with factors `[b0, b1, ...]` the
  rotation's columns are split into consecutive slices of `b_i // 2` and
  `bucket = h0 + b0 * h1 + b0 * b1 * h2 + ...` (Hugging Face's factorisation).
  """
  factors = _bucket_factors(n_buckets)
  _check_rotations(rotations, qk.shape[2], qk.shape[3], factors)
  return jnp.moveaxis(_hash_rows(qk, rotations, factors), 1, 3)


def _take(x: jnp.ndarray, idx: jnp.ndarray) -> jnp.ndarray:
  """`out[..., i, ...] = x[..., idx[..., i], ...]` along axis `idx.ndim - 1`.

  The leading axes of `x` are those of `idx`; `x` may have trailing feature axes.
  """
  if x.shape[:idx.ndim - 1] != idx.shape[:-1]:
    raise ValueError(f"index shape {idx.shape} must match the leading axes of {x.shape}")
  axis = idx.ndim - 1
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - idx.ndim))
  return jnp.take_along_axis(x, idx, axis=axis)


@jax.custom_vjp
def permute(x: jnp.ndarray, perm: jnp.ndarray, inv_perm: jnp.ndarray) -> jnp.ndarray:
  """Reorders `x` by a permutation; the gradient is a gather too, not a scatter-add.

  Args:
    x: `[..., n, ...]` whose leading axes are `perm.shape`.
    perm: int `[..., n]`, a permutation of `range(n)` along its last axis.
    inv_perm: its inverse, `inv_perm[..., perm[..., i]] == i`.

  Returns:
    `out[..., i, ...] = x[..., perm[..., i], ...]`. The cotangent is mapped back with
    `permute(g, inv_perm, perm)`.
  """
  return _take(x, perm)


def _permute_fwd(x, perm, inv_perm):
  return _take(x, perm), (perm, inv_perm)


def _permute_bwd(res, g):
  perm, inv_perm = res
  return permute(g, inv_perm, perm), None, None


permute.defvjp(_permute_fwd, _permute_bwd)


def _inverse_permutation(perm: jnp.ndarray) -> jnp.ndarray:
  """`inv` with `inv[..., perm[..., i]] = i` for permutations along the last axis."""
  ids = jnp.broadcast_to(jnp.arange(perm.shape[-1], dtype=perm.dtype), perm.shape)
  return jnp.put_along_axis(jnp.zeros_like(perm), perm, ids, axis=-1, inplace=False)


def _check_settings(chunk_len: int, n_chunks_before: int, n_chunks_after: int,
                    strict: bool) -> None:
  if chunk_len < 1:
    raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
  if n_chunks_before < 0 or n_chunks_after < 0:
    raise ValueError(f"n_chunks_before and n_chunks_after must be >= 0, got "
                     f"{n_chunks_before} and {n_chunks_after}")
  if strict and n_chunks_before < 1:
    raise ValueError("strict causal LSH attention sees the n_chunks_before * chunk_len "
                     "previous same-bucket keys, so n_chunks_before=0 leaves each query only "
                     "itself; set n_chunks_before >= 1 (or strict_causal=False for HF's "
                     "chunk windows)")


def _duplicate_counts(q_off, k_off, q_bucket, k_bucket, *, chunk_len, n_chunks,
                      n_chunks_before, n_chunks_after, strict):
  """How many times each (query, key) pair of the windows is attended over all rounds.

  Args:
    q_off, q_bucket: `[b, h, n_chunks, chunk_len, n_hashes]`: for each query entry, the
      sorted offset and bucket of its position in every round.
    k_off, k_bucket: `[b, h, n_chunks, window, n_hashes]`: the same for the window keys.
    chunk_len, n_chunks, n_chunks_before, n_chunks_after: the sorted-sequence chunking.
    strict: count strict causal windows (same bucket, at most `n_chunks_before *
      chunk_len` sorted offsets back) instead of chunk windows.

  Returns:
    int32 `[b, h, n_chunks, chunk_len, window]`.
  """
  if strict:
    qo, ko = q_off[..., :, None, :], k_off[..., None, :, :]
    seen = ((q_bucket[..., :, None, :] == k_bucket[..., None, :, :]) & (ko <= qo)
            & (ko >= qo - n_chunks_before * chunk_len))
    return jnp.sum(seen, axis=-1, dtype=jnp.int32)
  # The key's copy in chunk kc lies in the window of the query's copy in chunk qc once for
  # each shift s in [-before, after] with qc + s == kc (mod n_chunks); more than once when
  # the window wraps onto itself.
  qc = (q_off // chunk_len)[..., :, None, :, None]
  kc = (k_off // chunk_len)[..., None, :, None, :]
  span = n_chunks_before + n_chunks_after
  shift = (kc - qc + n_chunks_before) % n_chunks
  times = jnp.where(shift <= span, (span - shift) // n_chunks + 1, 0)
  return jnp.sum(times, axis=(-2, -1), dtype=jnp.int32)


def _attend_window(params, rows, info, offsets, rng, *, project, n, chunk_len,
                   n_chunks_before, n_chunks_after, causal, strict, dropout_rate):
  """One step of `windowed_attention`: shared-QK attention of a window's query chunks.

  Args:
    params, rows: `project(params, rows) -> (qk, v)`, each `[b, h, W*c, d_head]`.
    info: the window's `{'pos', 'real', 'bucket'[, 'dup_offsets', 'dup_buckets']}`
      `[b, h, W*c(, n_hashes)]`: original position, not-padding flag, round-offset bucket
      (and, for the duplicate correction, the sorted offset and bucket of the entry's
      position in every round).
    offsets: int32 `[W*c]` unwrapped sorted offsets of the window's entries.
    rng: dropout key of the step, or None.
    project, n, chunk_len, n_chunks_before, n_chunks_after, causal, strict, dropout_rate:
      static settings; `n` = sorted entries in all rounds.

  Returns:
    `(out [b, h, G*c, d_head] in v.dtype, lse float32 [b, h, G*c])`.
  """
  qk, v = project(params, rows)
  before, after = n_chunks_before, n_chunks_after
  chunks = lambda t: split_chunks(t, chunk_len, axis=2)
  here = lambda t: query_chunks(chunks(t), before, after)      # [b, h, G, c, ...]
  around = lambda t: window_keys(chunks(t), before, after)     # [b, h, G, window, ...]
  as_query = lambda t: here(t)[:, :, :, :, None]               # [b, h, G, c, 1]
  as_key = lambda t: around(t)[:, :, :, None, :]               # [b, h, G, 1, window]

  logits = jnp.einsum("bhgcd,bhgwd->bhgcw", here(qk), around(normalize_shared_keys(qk)),
                      preferred_element_type=jnp.float32)
  if "dup_offsets" in info:
    offs, bkts = info["dup_offsets"], info["dup_buckets"]
    counts = _duplicate_counts(here(offs), around(offs), here(bkts), around(bkts),
                               chunk_len=chunk_len, n_chunks=n // chunk_len,
                               n_chunks_before=before, n_chunks_after=after, strict=strict)
    logits = logits - jnp.log(jnp.maximum(counts, 1).astype(jnp.float32))

  pos = info["pos"]
  keep = as_key(info["real"])
  if causal:
    keep = keep & (as_key(pos) <= as_query(pos))
  if strict:
    offset = (offsets % n)[None, None]  # the wrapped sorted offsets
    buckets = info["bucket"]
    q_off, k_off = as_query(offset), as_key(offset)
    keep = (keep & (as_key(buckets) == as_query(buckets)) & (k_off <= q_off)
            & (k_off >= q_off - before * chunk_len))
  logits = replace_masked(logits, keep, MASK_VALUE)
  logits = jnp.where(as_key(pos) == as_query(pos), jnp.float32(SELF_MASK_VALUE), logits)
  # Normalised by the sum, not by exp(-lse): lse is rounded at the -1e5 self-mask scale.
  probs, lse = softmax_lse(logits)
  probs = dropout(probs, dropout_rate, rng)
  out = jnp.einsum("bhgcw,bhgwd->bhgcd", probs.astype(v.dtype), around(v))
  b, h = out.shape[:2]
  return out.reshape(b, h, -1, out.shape[-1]), lse.reshape(b, h, -1)


def _split_rows(params, rows):
  """`project` of `lsh_attention`: rows are `[qk; v]` per head."""
  del params
  d = rows.shape[-1] // 2
  return rows[..., :d], rows[..., d:]


def lsh_buckets(buckets: jnp.ndarray, real: jnp.ndarray, n_total: int) -> jnp.ndarray:
  """Round-offset buckets `[b, h, n_hashes, Lp]`: padding in bucket `n_total`, round r + r(n_total+1)."""
  n_hashes = buckets.shape[2]
  buckets = jnp.where(real[:, None, None, :], buckets, n_total)
  return buckets + (n_total + 1) * jnp.arange(n_hashes, dtype=jnp.int32)[None, None, :, None]


def _round_buckets(buckets: jnp.ndarray, n_total: int) -> jnp.ndarray:
  """`lsh_buckets` without the round offsets: each round's own buckets in `[0, n_total]`."""
  n_hashes = buckets.shape[2]
  return buckets - (n_total + 1) * jnp.arange(n_hashes, dtype=buckets.dtype)[None, None, :, None]


def sort_rounds(buckets: jnp.ndarray, n_values: Optional[int] = None) -> jnp.ndarray:
  """Each round's positions sorted by (bucket, position): int32 `[b, h, n_hashes, Lp]`.

  Args:
    buckets: int `[b, h, n_hashes, Lp]` from `lsh_buckets`.
    n_values: buckets per round including padding's (`n_total + 1` of `lsh_buckets`), or
      None if unknown. When `n_values * Lp <= 2^32` the rounds are sorted as unique uint32
      keys `bucket * Lp + position` (one sort of one operand: ~4x faster on XLA:CPU than
      a stable argsort); otherwise by a stable argsort of the buckets. Buckets outside
      round r's `[r * n_values, (r + 1) * n_values)` then sort as its nearest end.
  """
  n_hashes, padded = buckets.shape[2:]
  if n_values is None or n_values * padded > 2 ** 32:
    return jnp.argsort(buckets, axis=-1, stable=True).astype(jnp.int32)
  rounds = n_values * jnp.arange(n_hashes, dtype=buckets.dtype)[None, None, :, None]
  local = jnp.clip(buckets - rounds, 0, n_values - 1).astype(jnp.uint32)
  positions = jax.lax.broadcasted_iota(jnp.uint32, buckets.shape, 3)
  keys = local * jnp.uint32(padded) + positions
  return (jnp.sort(keys, axis=-1) % jnp.uint32(padded)).astype(jnp.int32)


def _lsh_plan(x, project, buckets, real, *, chunk_len, n_chunks_before, n_chunks_after,
              causal, strict, correct_duplicates, dropout_rate, chunks_per_step,
              n_values=None):
  """`windowed_attention`'s (attend_fn, order, info, chunks per step) over the sorted
  entries, and the (sort, undo) permutations `[b, h, n_hashes * Lp]`. `n_values`: see
  `sort_rounds`."""
  batch, n_heads, n_hashes, padded = buckets.shape
  n_sorted = n_hashes * padded
  # Each round sorted alone: keys over all rounds would overflow at 0.5M tokens.
  order = sort_rounds(buckets, n_values)  # [b, h, n_hashes, Lp] positions
  rounds = padded * jnp.arange(n_hashes, dtype=order.dtype)[None, None, :, None]
  sort_idx = (order + rounds).reshape(batch, n_heads, n_sorted)
  undo_idx = _inverse_permutation(sort_idx)
  pos_s = order.reshape(batch, n_heads, n_sorted)
  info = {"pos": pos_s,
          "real": _take(jnp.broadcast_to(real[:, None], (batch, n_heads, padded)), pos_s)}
  if strict:
    info["bucket"] = _take(buckets.reshape(batch, n_heads, n_sorted), sort_idx)
  if correct_duplicates:
    by_position = lambda t: _take(jnp.swapaxes(t, 2, 3), pos_s)  # [b, h, n_sorted, n_hashes]
    info["dup_offsets"] = by_position(undo_idx.reshape(buckets.shape))
    info["dup_buckets"] = by_position(buckets)

  attend = functools.partial(
      _attend_window, project=project, n=n_sorted, chunk_len=chunk_len,
      n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after, causal=causal,
      strict=strict, dropout_rate=dropout_rate)
  steps = chunks_per_step or default_chunks_per_step(batch, n_heads, x.shape[-1], chunk_len)
  return attend, pos_s, info, steps, (sort_idx, undo_idx)


def lsh_core(x: jnp.ndarray, params, project: Callable, buckets: jnp.ndarray,
             real: jnp.ndarray, *, chunk_len: int, n_chunks_before: int,
             n_chunks_after: int, causal: bool, strict: bool, correct_duplicates: bool,
             dropout_rate: float, dropout_rng: Optional[jax.Array],
             chunks_per_step: Optional[int], n_values: Optional[int] = None) -> jnp.ndarray:
  """LSH attention given the buckets; Q/K/V are projected from `x` a step at a time.

  Args:
    x: per-position rows `[b, 1 or h, Lp, F]`, `Lp` a multiple of `chunk_len`.
    params, project: `project(params, rows [b, h, m, F]) -> (qk, v)` `[b, h, m, d_head]`.
    buckets: int32 `[b, h, n_hashes, Lp]` from `lsh_buckets` (padding, round offsets).
    real: `[b, Lp]` bool, False = padding.
    chunk_len, n_chunks_before, n_chunks_after, causal, strict, correct_duplicates,
      dropout_rate, dropout_rng: as in `lsh_attention` (`strict` = causal and strict_causal).
    chunks_per_step: chunks per step of `windowed_attention` (None: `default_chunks_per_step`).
    n_values: buckets per round including padding's, if known (see `sort_rounds`).

  Returns:
    `[b, h, Lp, d_head]`.
  """
  batch, n_heads, n_hashes, padded = buckets.shape
  attend, pos_s, info, steps, (sort_idx, undo_idx) = _lsh_plan(
      x, project, buckets, real, chunk_len=chunk_len, n_chunks_before=n_chunks_before,
      n_chunks_after=n_chunks_after, causal=causal, strict=strict,
      correct_duplicates=correct_duplicates, dropout_rate=dropout_rate,
      chunks_per_step=chunks_per_step, n_values=n_values)
  out, lse = windowed_attention(attend, x, params, pos_s, info, dropout_rng, chunk_len,
                                n_chunks_before, n_chunks_after, steps)
  out = permute(out, undo_idx, sort_idx).reshape(batch, n_heads, n_hashes, padded, -1)
  if n_hashes == 1:
    return out[:, :, 0]
  lse = permute(lse, undo_idx, sort_idx).reshape(batch, n_heads, n_hashes, padded)
  weights = jax.nn.softmax(lse, axis=2)[..., None]
  return jnp.sum(out.astype(jnp.float32) * weights, axis=2).astype(out.dtype)


def lsh_attention(qk: jnp.ndarray, v: jnp.ndarray, rotations: jnp.ndarray, *,
                  n_buckets: Optional[NBuckets], chunk_len: int, n_chunks_before: int = 1,
                  n_chunks_after: int = 0, causal: bool = False, strict_causal: bool = True,
                  mask: Optional[jnp.ndarray] = None, correct_duplicates: bool = False,
                  dropout_rate: float = 0., dropout_rng: Optional[jax.Array] = None,
                  chunks_per_step: Optional[int] = None) -> jnp.ndarray:
  """Multi-round LSH shared-QK attention (always hashes; no short-sequence fallback).

  The sequence is padded internally to a multiple of `chunk_len` (padding masked, in the
  extra bucket) and sliced back. For round r, positions are stably sorted by bucket
  (offset by `r * (prod(factors) + 1)`, the +1 being the padding bucket), the rounds are
  concatenated, cut into chunks, and each query attends to its chunk and
  `n_chunks_before` / `n_chunks_after` neighbours, wrapping around the concatenation.
  The chunks are processed `chunks_per_step` at a time (`windowed_attention`): no
  sorted copy or logits of the whole sequence is formed, in either pass.

  Args:
    qk: shared queries/keys `[batch, length, n_heads, d_head]` (unnormalised; keys are
      `qk * rsqrt(mean(qk^2) + 1e-6) / sqrt(d_head)`, hashing uses `qk`).
    v: values `[batch, length, n_heads, d_head]`.
    rotations: `[n_heads, d_head, n_hashes, sum(factors) // 2]` (see `draw_rotations`);
      n_hashes is read from its shape.
    n_buckets: even int or list of even factors; None = `resolve_n_buckets` default.
    chunk_len: sorted entries per chunk (>= 1).
    n_chunks_before: chunks looked back at (>= 0; >= 1 for strict causal).
    n_chunks_after: chunks looked ahead at (>= 0).
    causal: key j is visible to query i only if j <= i (original positions).
    strict_causal: with `causal`, a query sees only keys of its own bucket at most
      `n_chunks_before * chunk_len` sorted entries back, so what it sees depends only on
      positions <= i. False gives HF/trax's chunk windows, which leak the future (see
      `LSHSelfAttention`).
    mask: `[batch, length]` bool, False = padding. None = all real.
    correct_duplicates: subtract log(number of times the key is attended by this query over
      all rounds' windows) from each logit (the paper's correction), so that the combined
      result is softmax attention over the union of the windows. Its index arithmetic
      costs n_hashes^2 (n_hashes if strict) times the size of the logits.
    dropout_rate: dropout on the attention probabilities.
    dropout_rng: rng for that dropout; None disables it.
    chunks_per_step: chunks attended per loop step (memory of a step grows with it);
      None = 4096 sorted entries per step.

  Returns:
    `[batch, length, n_heads, d_head]` in `v.dtype`.
  """
  strict = causal and strict_causal
  _check_settings(chunk_len, n_chunks_before, n_chunks_after, strict)
  if qk.ndim != 4 or qk.shape != v.shape:
    raise ValueError(f"qk and v must both be [batch, length, n_heads, d_head], got "
                     f"{qk.shape} and {v.shape}")
  batch, length, n_heads, d_head = qk.shape
  if mask is not None and mask.shape != (batch, length):
    raise ValueError(f"mask must be [batch, length] = {(batch, length)}, got {mask.shape}")
  padded, _ = chunk_positions(length, chunk_len)
  factors = _bucket_factors(resolve_n_buckets(n_buckets, padded, chunk_len))
  _check_rotations(rotations, n_heads, d_head, factors)

  real = jnp.ones((batch, length), bool) if mask is None else mask.astype(bool)
  real = pad_axis(real, padded, axis=1, value=False)
  qk, v = (pad_axis(t, padded, axis=1) for t in (qk, v))
  buckets = lsh_buckets(jnp.moveaxis(_hash_rows(qk, rotations, factors), 1, 3), real,
                        math.prod(factors))
  qk, v = (jnp.swapaxes(t, 1, 2) for t in (qk, v))  # [b, h, Lp, d]
  out = lsh_core(jnp.concatenate([qk, v], axis=-1), None, _split_rows, buckets, real,
                 chunk_len=chunk_len, n_chunks_before=n_chunks_before,
                 n_chunks_after=n_chunks_after, causal=causal, strict=strict,
                 correct_duplicates=correct_duplicates, dropout_rate=dropout_rate,
                 dropout_rng=dropout_rng, chunks_per_step=chunks_per_step,
                 n_values=math.prod(factors) + 1)
  return jnp.swapaxes(out[:, :, :length], 1, 2).astype(v.dtype)


class LSHSelfAttention(nn.Module):
  """Multi-head LSH self-attention with shared query/key projection and no biases.

  Parameters `query_key`, `value` (`[d_model, n_heads * d_head]`) and `out`
  (`[n_heads * d_head, d_model]`), as Hugging Face's `LSHSelfAttention` + output dense (and
  `FullSelfAttention(shared_qk=True)`, its exact O(L^2) counterpart). When the padded
  length is <= `chunk_len` it computes plain shared-QK attention (no hashing, no 'hash'
  rng needed), as HF does.

  Rotations are drawn from the 'hash' rng stream on every call (`rngs={'hash': key}`;
  required even when deterministic). The same rng gives the same buckets, which is what a
  recomputing backward pass needs. `rotations=` replaces the draw (the replay hook):
  `[n_heads, d_head, n_hashes, sum(factors) // 2]`, float. To replay Hugging Face with
  `config.hash_seed = s`, pass `torch.manual_seed(s); torch.randn(shape)` as an array: HF
  reseeds before every hashing, so every layer and call uses those same rotations.

  Strict causality: in HF and trax, causal LSH attention leaks the future. A token's
  sorted offset, hence the chunk boundaries and which earlier keys share a query's
  window, depends on the buckets of later tokens. With `causal=True` and
  `strict_causal=True` (default) a query attends only to keys of its own bucket (same
  round) at most `n_chunks_before * chunk_len` sorted entries before it (and itself). Those
  are its bucket's latest earlier tokens, contiguous right before it in sorted order, so
  what it sees depends only on positions <= its own; the window fits in the gathered
  look-back chunks, so the cost is unchanged. `strict_causal=False` reproduces HF/trax
  exactly (for parity and imported checkpoints).

  Cached decoding (`decode=`; strictly causal only, with a fixed `n_buckets` and given
  `rotations`, the same for the prefill and every step; see `kv_cache`): the cache keeps
  every position's key and value and, per head, round and bucket, a ring of its latest
  `n_chunks_before * chunk_len + 1` positions (`lsh_cache`, where the algorithm and why
  it equals the forward pass are described). When the whole generation fits in one
  chunk (`cache_len <= chunk_len`) the forward pass is plain shared-QK attention, and the
  cache a ring of every position (`kv_cache.fill_ring`).

  Attributes:
    n_heads: number of heads.
    d_head: size of each head.
    n_hashes: hashing rounds.
    n_buckets: even int or list of even factors (e.g. `[64, 128]`); None = HF's default
      for the padded length (`resolve_n_buckets`).
    chunk_len: sorted entries per chunk.
    n_chunks_before: chunks looked back at.
    n_chunks_after: chunks looked ahead at.
    causal: mask future keys (by original position).
    strict_causal: see above; only used when `causal`.
    attention_dropout: dropout rate on attention probabilities ('dropout' rng).
    correct_duplicates: the paper's correction for keys seen in several rounds.
    norm_eps: epsilon of the LayerNorm given as `norm=` to `__call__`.
    output_dropout: dropout rate on the output (after `out`; 'dropout' rng).
    position_chunk_len: positions per chunk of the position-wise work (hashing
      projection, output projection); None = all at once.
    chunks_per_step: sorted chunks attended per loop step (None = `default_chunks_per_step`).
    sequence_axis: the mesh axis the sequence is sharded over, when called inside
      `shard_map` on one device's slice of positions (`lsh_slices`); None: the whole
      sequence is here.
    exchange_capacity: rows per device pair and pass of the slices' exchanges (None:
      `exchange.default_capacity`); any value is exact, a small one takes more passes.
    deterministic: disables dropout; merged with the call argument.
    dtype: computation dtype (parameters stay float32).
  """
  n_heads: int
  d_head: int
  n_hashes: int = 1
  n_buckets: Optional[NBuckets] = None
  chunk_len: int = 64
  n_chunks_before: int = 1
  n_chunks_after: int = 0
  causal: bool = False
  strict_causal: bool = True
  attention_dropout: float = 0.
  correct_duplicates: bool = False
  norm_eps: float = 1e-12
  output_dropout: float = 0.
  position_chunk_len: Optional[int] = None
  chunks_per_step: Optional[int] = None
  sequence_axis: Optional[str] = None
  exchange_capacity: Optional[int] = None
  deterministic: Optional[bool] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: Optional[jnp.ndarray] = None,
               deterministic: Optional[bool] = None,
               rotations: Optional[jnp.ndarray] = None,
               norm: Optional[Tuple[jnp.ndarray, jnp.ndarray]] = None,
               rebuild: Optional[Tuple[jnp.ndarray, ...]] = None,
               buckets: Optional[jnp.ndarray] = None, return_buckets: bool = False,
               decode: Optional[DecodeMode] = None):
    """`x`: `[batch, length, d_model]`, `mask`: `[batch, length]` -> `[batch, length, d_model]`.

    `rotations`: optional `[n_heads, d_head, n_hashes, sum(factors) // 2]` used instead of
    drawing from the 'hash' rng (ignored when the plain-attention fallback applies).
    `norm`: optional `(scale, bias)` `[d_model]` of a LayerNorm (epsilon `norm_eps`)
    applied to `x` first, position by position where the rows are used (so no normalised
    copy of `x` is kept for the backward pass).
    `rebuild`: `(y, dx, dy)` for the backward pass of a reversible layer: returns
    `(y - out, dx + dout/dx^T dy, param grads, norm grads)` in one pass over the chunks
    (`rebuild_attention`), or None where that does not apply (several hashing rounds, or
    see `can_rebuild`).
    `return_buckets`: returns `(out, buckets)`, the buckets int32 `[batch, n_heads, n_hashes,
    padded length]` numbered as `lsh_buckets` does (None when the sequence fits in one
    chunk and is not hashed). `buckets`: such buckets, used instead of hashing `x` (a
    reversible backward pass gives the forward's back: its rebuilt `x` can differ by
    rounding, and a vector near a bucket boundary would change bucket).
    `decode`: `kv_cache.Prefill` (also writes the 'cache' collection; a prompt within one
    chunk is padded, masked, past it when the cache is longer, so that it is hashed as the
    longer sequence is) or `kv_cache.Step` (`x` `[batch, 1, d_model]`: attends from the
    cache and updates it); deterministic.
    """
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    _check_settings(self.chunk_len, self.n_chunks_before, self.n_chunks_after,
                    self.causal and self.strict_causal)
    if self.n_hashes < 1:
      raise ValueError(f"n_hashes must be >= 1, got {self.n_hashes}")
    check_sequence(x, n_heads=self.n_heads, d_head=self.d_head)
    prompt_len = x.shape[1]
    if decode is not None and self.sequence_axis is not None:
      raise ValueError("cached decoding runs on one device: build the decoding model "
                       "without a sequence axis")
    if decode is not None:
      self._check_decode(decode, deterministic, rotations, prompt_len)
      if isinstance(decode, Prefill):
        x, mask = self._hashed_prompt(x, mask, decode.cache_len)
    batch, length, d_model = x.shape
    if mask is not None and mask.shape != (batch, length):
      raise ValueError(f"mask must be [batch, length] = {(batch, length)}, got {mask.shape}")
    heads = (self.n_heads, self.d_head)
    kernel = lambda name, d_in, d_out: DenseParams(
        d_in, d_out, FROM_HEADS if name == "out" else TO_HEADS, use_bias=False,
        name=name)()[0]
    params = {"norm": norm,
              "query_key": kernel("query_key", d_model, self.n_heads * self.d_head).reshape(
                  (d_model,) + heads),
              "value": kernel("value", d_model, self.n_heads * self.d_head).reshape(
                  (d_model,) + heads)}
    w_out = kernel("out", self.n_heads * self.d_head, d_model).reshape(heads + (d_model,))
    drop = not deterministic
    attn_rng = self.make_rng("dropout") if drop and self.attention_dropout > 0. else None
    out_rng = self.make_rng("dropout") if drop and self.output_dropout > 0. else None
    project = functools.partial(_project_shared_qk, eps=self.norm_eps, dtype=self.dtype)
    chunk = self.position_chunk_len or length
    sliced = self.sequence_axis is not None
    if rebuild is not None and (self.n_hashes != 1
                                or not can_rebuild(rebuild, length, self.chunk_len, sliced)):
      return None
    if isinstance(decode, Step):
      return self._decode_step(x, decode.positions, params, project, w_out, rotations)

    if sliced and self.n_hashes == 1:  # the block in one pass of steps (output included)
      out, buckets = self._slice_attention(x, mask, params, project, rotations, buckets,
                                           chunk, (attn_rng, out_rng), (w_out, rebuild))
      return (out, buckets) if return_buckets and rebuild is None else out
    if sliced:
      out, buckets = self._slice_attention(x, mask, params, project, rotations, buckets,
                                           chunk, attn_rng)
    else:
      out, buckets, x = self._whole_attention(x, mask, params, project, w_out, rotations,
                                              buckets, rebuild, chunk, attn_rng, out_rng)
      if rebuild is not None:
        return out
    out = output_projection(out, w_out, self.output_dropout, out_rng, chunk, self.dtype)
    if isinstance(decode, Prefill):
      self._fill_cache(decode, x, params, project, buckets)
      out = out[:, :prompt_len]
    return (out, buckets) if return_buckets else out

  def _settings(self, padded):
    """The settings of `lsh_core` for a (padded) sequence of `padded` positions."""
    return dict(chunk_len=self.chunk_len, n_chunks_before=self.n_chunks_before,
                n_chunks_after=self.n_chunks_after, causal=self.causal,
                strict=self.causal and self.strict_causal,
                correct_duplicates=self.correct_duplicates,
                dropout_rate=self.attention_dropout, chunks_per_step=self.chunks_per_step,
                n_values=math.prod(_bucket_factors(resolve_n_buckets(
                    self.n_buckets, padded, self.chunk_len))) + 1)

  def _checked_buckets(self, buckets, batch, length):
    if (buckets.shape != (batch, self.n_heads, self.n_hashes, length)
        or not jnp.issubdtype(buckets.dtype, jnp.integer)):
      raise ValueError(f"buckets must be int [batch, n_heads, n_hashes, padded length] = "
                       f"{[batch, self.n_heads, self.n_hashes, length]}, got "
                       f"{buckets.dtype} {list(buckets.shape)}: pass back those returned "
                       f"by return_buckets=True for the same x")
    return buckets

  def _slice_attention(self, x, mask, params, project, rotations, buckets, chunk, rngs,
                       block=None):
    """(heads `[b, h, n, d_head]`, buckets `[b, h, R, n]`) of this device's slice `x`
    `[b, n, d_model]` of a sequence sharded over `sequence_axis` (`lsh_slices`); with
    `block` `(out kernel, rebuild or None)` (one round), the block's output `[b, n,
    d_model]` (or the rebuild's result) instead of the heads (`lsh_slice_block`)."""
    from reformer_jax.layers import lsh_slices  # pylint: disable=import-outside-toplevel
    batch, length = x.shape[:2]
    padded = length * jax.lax.axis_size(self.sequence_axis)
    real = jnp.ones((batch, length), bool) if mask is None else mask.astype(bool)
    if buckets is None:
      buckets = self._hash(x, real, params, rotations, padded, chunk)
    buckets = self._checked_buckets(buckets, batch, length)
    settings = dict(axis_name=self.sequence_axis, capacity=self.exchange_capacity,
                    **self._settings(padded))
    if block is not None:
      return lsh_slices.lsh_slice_block(self, x, params, project, block[0], buckets, real,
                                        rngs, block[1], **settings), buckets
    out = lsh_slices.lsh_slice_core(x, params, project, buckets, real, dropout_rng=rngs,
                                    position_chunk=chunk, **settings)
    return out, buckets

  def _whole_attention(self, x, mask, params, project, w_out, rotations, buckets, rebuild,
                       chunk, attn_rng, out_rng):
    """(heads `[b, h, L, d_head]`, buckets or None, `x` padded to whole chunks) of the
    whole sequence `x`; with `rebuild`, `rebuild_attention`'s result first."""
    batch, length = x.shape[:2]
    padded, _ = chunk_positions(length, self.chunk_len)
    if padded <= self.chunk_len:
      qk, v = (jnp.swapaxes(t, 1, 2) for t in project(params, x[:, None]))
      out = full_attention(qk, normalize_shared_keys(qk), v, causal=self.causal, mask=mask,
                           self_mask=True, dropout_rate=self.attention_dropout,
                           dropout_rng=attn_rng)
      return jnp.swapaxes(out, 1, 2), None, x  # [b, h, L, d_head]
    x = pad_axis(x, padded, axis=1)
    real = jnp.ones((batch, length), bool) if mask is None else mask.astype(bool)
    real = pad_axis(real, padded, axis=1, value=False)
    if buckets is None:
      buckets = self._hash(x, real, params, rotations, padded, chunk)
    buckets = self._checked_buckets(buckets, batch, padded)
    if rebuild is not None:
      attend, order, info, steps, _ = _lsh_plan(x[:, None], project, buckets, real,
                                                **self._settings(padded))
      return rebuild_attention(self, attend, x[:, None], params, w_out, order, info,
                               attn_rng, out_rng, rebuild, steps), None, x
    out = lsh_core(x[:, None], params, project, buckets, real, dropout_rng=attn_rng,
                   **self._settings(padded))[:, :, :length]
    return out, buckets, x

  def _hash(self, x, real, params, rotations, padded, chunk):
    """int32 buckets `[batch, n_heads, n_hashes, padded]` of the padded `x`, `real`."""
    n_buckets = resolve_n_buckets(self.n_buckets, padded, self.chunk_len)
    if rotations is None:
      if not self.has_rng("hash"):
        raise ValueError("LSHSelfAttention draws its hash rotations from the 'hash' rng: "
                         "call apply/init with rngs={'hash': key} (also when "
                         "deterministic), or pass rotations=")
      rotations = draw_rotations(self.make_rng("hash"), self.n_heads, self.d_head,
                                 self.n_hashes, n_buckets)
    elif rotations.ndim != 4 or rotations.shape[2] != self.n_hashes:
      raise ValueError(f"rotations must be [n_heads, d_head, n_hashes={self.n_hashes}, "
                       f"sum(n_buckets factors) // 2], got {tuple(rotations.shape)}")
    factors = _bucket_factors(n_buckets)
    _check_rotations(rotations, self.n_heads, self.d_head, factors)

    def hash_chunk(hash_params, rows, index):  # [b, c, d_model] -> [b, c, h, n_hashes]
      del index
      params, rotations = hash_params
      if params["norm"] is not None:
        rows = layer_norm(rows, *params["norm"], self.norm_eps)
      kernel = params["query_key"]  # [d_model, h, d_head]; only the shared QK is hashed
      qk = dense(rows.astype(self.dtype), kernel.reshape(kernel.shape[0], -1).astype(self.dtype))
      return _hash_rows(qk.reshape(rows.shape[:2] + kernel.shape[1:]), rotations, factors)

    hash_params = jax.lax.stop_gradient((params, rotations))
    buckets = map_positions(hash_chunk, hash_params, jax.lax.stop_gradient(x), chunk)
    return lsh_buckets(jnp.moveaxis(buckets, 1, 3), real, math.prod(factors))

  def _check_decode(self, decode, deterministic, rotations, length):
    check_decodable(self, decode, self.causal, deterministic, length)
    if not self.strict_causal:
      raise ValueError("LSHSelfAttention decodes only strictly causal attention "
                       "(strict_causal=True): HF's chunk windows depend on later tokens, so "
                       "no cache reproduces them; run the whole sequence instead")
    if self.n_buckets is None:
      raise ValueError("LSHSelfAttention decodes with a fixed n_buckets (a position's buckets "
                       "must not change as the sequence grows): set n_buckets, e.g. "
                       "resolve_n_buckets(None, padded max length, chunk_len)")
    if rotations is None:
      raise ValueError("LSHSelfAttention decodes with given rotations=, the same for the "
                       "prefill and every step (draw_rotations)")

  def _hashed_prompt(self, x, mask, cache_len):
    """`(x, mask)` of a prefill: a prompt within one chunk padded (masked) to one position
    past it when the cache is longer, so that it is hashed as the longer sequence is."""
    length = x.shape[1]
    if cache_len <= self.chunk_len or length > self.chunk_len:
      return x, mask
    real = jnp.ones(x.shape[:2], bool) if mask is None else mask.astype(bool)
    return (pad_axis(x, self.chunk_len + 1, axis=1),
            pad_axis(real, self.chunk_len + 1, axis=1, value=False))

  def _fill_cache(self, decode, x, params, project, buckets):
    """Writes the cache of a prefill of `x` `[batch, P, d_model]` hashed into the forward
    pass's `buckets` (None: plain shared-QK attention, the generation within one chunk)."""
    qk, v = project(params, x[:, None])
    key = normalize_shared_keys(qk)
    if buckets is None:
      write_cache(self, fill_ring(key, v, decode.lengths, decode.cache_len))
      return
    n_total = math.prod(_bucket_factors(self.n_buckets))
    rounds = _round_buckets(buckets[..., :x.shape[1]], n_total)
    write_cache(self, fill_bucket_rings(key, v, rounds, decode.lengths, decode.cache_len,
                                        self.n_chunks_before * self.chunk_len, n_total))

  def _decode_step(self, x, positions, params, project, w_out, rotations):
    """Output `[batch, 1, d_model]` of one new position per sequence, `x` `[batch, 1,
    d_model]` at `positions` `[batch]`, from the cache of a prefill (updated)."""
    qk, v = (t[:, :, 0] for t in project(params, x[:, None]))  # [b, h, d_head]
    key = normalize_shared_keys(qk)
    if self.has_variable("cache", "ring"):
      n_total = math.prod(_bucket_factors(self.n_buckets))
      buckets = self._hash(x, jnp.ones(x.shape[:2], bool), params, rotations, padded=1,
                           chunk=1)
      out = cached_step(self, BUCKET_RINGS, bucket_ring_attention, qk, key, v,
                        _round_buckets(buckets, n_total)[..., 0], positions,
                        self.correct_duplicates)
    else:
      out = cached_step(self, RING, ring_attention, qk, key, v, positions, self_mask=True)
    return output_projection(out[:, :, None], w_out, 0., None, 1, self.dtype)


def _project_shared_qk(params, rows, *, eps, dtype):
  """(qk, v) `[b, h, m, d_head]` of rows `[b, h or 1, m, d_model]` (LayerNorm first if given)."""
  if params["norm"] is not None:
    rows = layer_norm(rows, *params["norm"], eps)
  rows = rows.astype(dtype)
  # One product with both kernels side by side (one weight-gradient product too).
  kernel = jnp.concatenate([params["query_key"], params["value"]], axis=-1).astype(dtype)
  if rows.shape[1] == 1:
    both = project_heads(rows[:, 0], kernel)
  else:
    both = jnp.stack([dense(rows[:, i], kernel[:, i]) for i in range(rows.shape[1])], axis=1)
  qk, v = jnp.split(both, [params["query_key"].shape[-1]], axis=-1)
  return qk, v
