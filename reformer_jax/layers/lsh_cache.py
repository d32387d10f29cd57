"""Cached decoding of strictly causal LSH attention: per bucket, a ring of its latest positions.

In hashing round r a strictly causal query at position p sees only keys of its own
bucket at most W = n_chunks_before * chunk_len sorted entries before it, and itself
(logit -1e5). The sort is stable (by bucket, then position), so those are its bucket's
latest W earlier positions: what the query sees depends only on positions <= p, not on
the chunk boundaries (which later tokens move). So position p of the forward pass over
any longer sequence equals position p of the forward pass over the sequence so far, and
a cache that keeps, per head, round and bucket, the latest W + 1 positions can compute it
exactly:

- the cache holds every position's normalised key and value (`[batch, heads, cache_len,
  d_head]`, as a Transformer's KV cache), and per head, round and bucket a ring of the
  positions of its last W + 1 entries (the j-th entry of a bucket in slot j mod (W + 1))
  with the bucket's entry count;
- a new query, hashed with the same rotations, is written into its bucket's ring in each
  round (the oldest of W + 1 entries drops out) and attends to that ring (its own entry
  at -1e5); the rounds are combined with weights softmax_r(logsumexp_r), as `lsh_core`
  does, and with `correct_duplicates` a key's logit loses log(number of rounds whose ring
  holds it);
- the prefill fills the rings from the prompt by sorting (bucket, position).

Cost per token O(n_hashes * W), flat in position; memory: a key and a value per position
plus n_hashes * n_buckets * (W + 1) ring slots. The one thing that can differ from the
forward pass is float rounding in the hash: a position's buckets come from a one-row
product instead of a long one, and an argmax between two rotated coordinates equal to
within rounding could flip.
"""
from typing import Tuple

import jax
import jax.numpy as jnp

from reformer_jax.layers.chunking import MASK_VALUE, SELF_MASK_VALUE
from reformer_jax.layers.kv_cache import Cache
from reformer_jax.layers.softmax import softmax_lse

BUCKET_RINGS = ("k", "v", "ring", "count")


def fill_bucket_rings(k: jnp.ndarray, v: jnp.ndarray, buckets: jnp.ndarray,
                      lengths: jnp.ndarray, cache_len: int, window: int,
                      n_buckets: int) -> Cache:
  """The cache of right-padded prompts.

  Args:
    k, v: normalised keys and values `[batch, heads, P, d_head]`, P <= cache_len.
    buckets: int `[batch, heads, n_hashes, P]` in `[0, n_buckets]` (each round's own
      numbering; positions >= `lengths` are dropped whatever their bucket).
    lengths: int `[batch]` real positions of each prompt.
    cache_len: positions the cache holds.
    window: W, the earlier entries of its bucket a query sees.
    n_buckets: buckets per round.

  Returns:
    `{'k', 'v': [batch, heads, cache_len, d_head], 'ring': int32 [batch, heads, n_hashes,
    n_buckets, W + 1] positions, 'count': int32 [batch, heads, n_hashes, n_buckets]}`.
  """
  slots = window + 1
  heads, rounds, prompt = buckets.shape[1:]

  def one(k, v, buckets, length):
    index = jnp.broadcast_to(jnp.arange(prompt, dtype=jnp.int32), buckets.shape)
    buckets = jnp.where(index < length, buckets, n_buckets)  # padding: dropped
    # Entries sorted by (bucket, position); an entry's rank in its bucket gives its slot.
    order = jnp.argsort(buckets, axis=-1, stable=True)
    sorted_buckets = jnp.take_along_axis(buckets, order, axis=-1)
    first = jax.vmap(jax.vmap(lambda s: jnp.searchsorted(s, s, side="left")))(sorted_buckets)
    rank = index - first
    count = jax.vmap(jax.vmap(lambda b: jnp.zeros(n_buckets, jnp.int32).at[b].add(
        1, mode="drop")))(buckets)
    total = jnp.take_along_axis(count, jnp.minimum(sorted_buckets, n_buckets - 1), axis=-1)
    kept = (sorted_buckets < n_buckets) & (rank >= total - slots)
    target = jnp.where(kept, sorted_buckets, n_buckets)
    h, r = jnp.meshgrid(jnp.arange(heads), jnp.arange(rounds), indexing="ij")
    ring = jnp.zeros((heads, rounds, n_buckets, slots), jnp.int32).at[
        h[..., None], r[..., None], target, rank % slots].set(order.astype(jnp.int32),
                                                               mode="drop")
    extend = lambda t: jnp.zeros((heads, cache_len, t.shape[-1]), t.dtype).at[:, :prompt].set(t)
    return {"k": extend(k), "v": extend(v), "ring": ring, "count": count}

  return jax.vmap(one)(k, v, buckets, lengths.astype(jnp.int32))


def bucket_ring_attention(cache: Cache, qk: jnp.ndarray, key: jnp.ndarray, v: jnp.ndarray,
                          buckets: jnp.ndarray, positions: jnp.ndarray,
                          correct_duplicates: bool) -> Tuple[jnp.ndarray, Cache]:
  """One new position per sequence added to its buckets' rings, then attending to them.

  Args:
    cache: from `fill_bucket_rings` (or an earlier step).
    qk, key, v: query, normalised key and value `[batch, heads, d_head]`.
    buckets: int `[batch, heads, n_hashes]` of the new positions.
    positions: int `[batch]`.
    correct_duplicates: the duplicate correction over the rounds' rings.

  Returns:
    `(out [batch, heads, d_head], cache)`. The new entry is written first (its key and
    value, its slot in each round's ring), then read back with the others: each update
    comes before the reads of its buffer, so XLA updates the cache in place instead of
    copying it every step.
  """
  def one(cache, qk, key, v, buckets, position):
    heads, rounds = buckets.shape
    slots = cache["ring"].shape[-1]
    h, r = jnp.meshgrid(jnp.arange(heads), jnp.arange(rounds), indexing="ij")
    count = cache["count"].at[h, r, buckets].add(1)
    entries = count[h, r, buckets]                                # [h, r], >= 1
    ring = cache["ring"].at[h, r, buckets, (entries - 1) % slots].set(position)
    k, v_all = (cache[n].at[:, position].set(t) for n, t in (("k", key), ("v", v)))
    cache = {"k": k, "v": v_all, "ring": ring, "count": count}
    ring = ring[h, r, buckets]                                    # [h, r, W + 1] positions
    valid = jnp.arange(slots)[None, None] < entries[..., None]
    keys, values = (t[h[..., None], ring] for t in (k, v_all))    # [h, r, W + 1, d]
    logits = jnp.einsum("hd,hrwd->hrw", qk, keys, preferred_element_type=jnp.float32)
    if correct_duplicates:
      # In how many rounds' rings (of the query's bucket in that round) each key lies.
      same = ((ring[:, :, :, None, None] == ring[:, None, None, :, :])
              & valid[:, None, None, :, :])
      times = jnp.sum(jnp.any(same, axis=-1), axis=-1)
      logits = logits - jnp.log(jnp.maximum(times, 1).astype(jnp.float32))
    logits = jnp.where(valid, logits, MASK_VALUE)
    logits = jnp.where(valid & (ring == position), jnp.float32(SELF_MASK_VALUE), logits)
    probs, lse = softmax_lse(logits)
    out = jnp.einsum("hrw,hrwd->hrd", probs.astype(v.dtype), values)
    if rounds == 1:
      return out[:, 0], cache
    weights = jax.nn.softmax(lse, axis=1)[..., None]
    return jnp.sum(out.astype(jnp.float32) * weights, axis=1).astype(out.dtype), cache

  return jax.vmap(one)(cache, qk, key, v, buckets, positions.astype(jnp.int32))
