"""Cached decoding of the attention layers: the two modes, and a ring of the latest keys.

A causal attention layer decodes in two modes, passed as its `decode=` call argument; it
keeps what later positions need in its flax `cache` collection (apply with
`mutable=['cache']`), as flax's lm1b example and t5x do:

- `Prefill(lengths, cache_len)`: `x` `[batch, P, d_model]` holds right-padded prompts
  (`lengths` real positions each). The layer runs its ordinary forward pass and writes its
  cache, laid out for `cache_len` positions.
- `Step(positions)`: `x` `[batch, 1, d_model]` is one new position per sequence, at
  `positions` (each sequence's earlier positions are in the cache); the layer attends
  from its cache and adds the position to it.

The mode is a call argument, not a module attribute (lm1b's `decode=True`), so that one
module definition with one parameter tree trains, prefills and steps, and the per-call
values (prompt lengths, each sequence's position, the cache's length) travel with it.
Each layer owns its cache's layout: local and full attention (and LSH attention over a
generation that fits in one chunk) keep a ring of the latest positions (below), LSH
attention rings per bucket (`lsh_cache.py`).

The ring: the keys, values and positions of the last `slots` positions, position p in
slot p mod `slots` (-1: empty). A query at p attends to the ring's entries at positions
<= p, and with `chunk_len` only to those of chunks >= p // chunk_len - chunks_before
(local attention: its window lies among the last (chunks_before + 1) * chunk_len
positions); full attention keeps every position (`slots` = the cache length).
"""
from typing import Callable, Dict, Sequence, Tuple, Union

import flax.linen as nn
from flax import struct
import jax
import jax.numpy as jnp

from reformer_jax.layers.chunking import MASK_VALUE, SELF_MASK_VALUE
from reformer_jax.layers.softmax import softmax_lse

Cache = Dict[str, jnp.ndarray]


@struct.dataclass
class Prefill:
  """Decode mode: run prompts `[batch, P, ...]` and write the cache (a pytree).

  Attributes:
    lengths: int `[batch]` real positions of each prompt, 1 .. P (the rest is padding).
    cache_len: positions the cache holds (prompt and new tokens), >= P; static.
  """
  lengths: jnp.ndarray
  cache_len: int = struct.field(pytree_node=False)


@struct.dataclass
class Step:
  """Decode mode: one new position per sequence, read from and added to the cache (a pytree).

  Attributes:
    positions: int `[batch]` position of each sequence's new token.
  """
  positions: jnp.ndarray


DecodeMode = Union[Prefill, Step]


def check_decodable(module: nn.Module, decode: DecodeMode, causal: bool, deterministic: bool,
                    length: int) -> None:
  """Raises ValueError unless `module` can run `decode` on `length` positions."""
  name = type(module).__name__
  if not isinstance(decode, (Prefill, Step)):
    raise ValueError(f"decode must be kv_cache.Prefill or kv_cache.Step, got {decode!r}")
  if not causal:
    raise ValueError(f"{name} decodes only causal attention (causal=True): without it a "
                     "position sees later ones, so there is nothing to cache")
  if not deterministic:
    raise ValueError(f"{name} decodes deterministically: pass deterministic=True (no "
                     "dropout) with decode=")
  if isinstance(decode, Step) and length != 1:
    raise ValueError(f"a decode step takes one position per sequence, x [batch, 1, d_model]; "
                     f"got {length}")
  if isinstance(decode, Prefill) and length > decode.cache_len:
    raise ValueError(f"prompts of {length} positions do not fit cache_len={decode.cache_len}")


def read_cache(module: nn.Module, names: Sequence[str]) -> Cache:
  """The `names` variables of `module`'s cache collection (written by a prefill)."""
  if not all(module.has_variable("cache", n) for n in names):
    raise ValueError(f"{type(module).__name__} has no cache to step from: run it with "
                     "decode=Prefill(...) and mutable=['cache'] first, and pass the 'cache' "
                     "collection it returns")
  return {n: module.get_variable("cache", n) for n in names}


def write_cache(module: nn.Module, cache: Cache) -> None:
  """Stores `cache` as `module`'s cache collection."""
  for name, value in cache.items():
    module.put_variable("cache", name, value)


def cached_step(module: nn.Module, names: Sequence[str], step: Callable, *args, **kwargs):
  """`out` of `step(cache, *args, **kwargs) -> (out, cache)` on `module`'s cache variables
  `names`, which it updates."""
  out, cache = step(read_cache(module, names), *args, **kwargs)
  write_cache(module, cache)
  return out


RING = ("k", "v", "pos")


def fill_ring(k: jnp.ndarray, v: jnp.ndarray, lengths: jnp.ndarray, slots: int) -> Cache:
  """The ring of each prompt's last `slots` positions.

  Args:
    k, v: keys and values `[batch, heads, P, d_head]` of the prompts.
    lengths: int `[batch]` real positions of each prompt.
    slots: the ring's size.

  Returns:
    `{'k', 'v': [batch, heads, slots, d_head], 'pos': int32 [batch, slots]}`.
  """
  def one(k, v, length):
    slot = jnp.arange(slots, dtype=jnp.int32)
    last = slot + slots * ((length - 1 - slot) // slots)
    pos = jnp.where(slot <= length - 1, last, -1)
    take = lambda t: jnp.take(t, jnp.clip(pos, 0, k.shape[1] - 1), axis=1)
    return {"k": take(k), "v": take(v), "pos": pos}

  return jax.vmap(one)(k, v, lengths.astype(jnp.int32))


def ring_attention(cache: Cache, q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray,
                   positions: jnp.ndarray, *, chunk_len: int = 0, chunks_before: int = 0,
                   self_mask: bool = False) -> Tuple[jnp.ndarray, Cache]:
  """One new position per sequence added to its ring, then attending to it.

  Args:
    cache: from `fill_ring` (or an earlier step).
    q, k, v: `[batch, heads, d_head]` of the new positions (`k` scaled).
    positions: int `[batch]`.
    chunk_len, chunks_before: a query at p sees chunks >= p // chunk_len - chunks_before
      only (local attention); 0: every cached position.
    self_mask: the query's own logit is -1e5 (shared-QK attention).

  Returns:
    `(out [batch, heads, d_head], cache)`. The new entry is written before the ring is
    read, so XLA updates the cache in place instead of copying it.
  """
  def one(cache, q, k, v, position):
    slot = position % cache["pos"].shape[0]
    cache = {"k": cache["k"].at[:, slot].set(k), "v": cache["v"].at[:, slot].set(v),
             "pos": cache["pos"].at[slot].set(position)}
    pos = cache["pos"]
    keep = (pos >= 0) & (pos <= position)
    if chunk_len:
      keep = keep & (pos // chunk_len >= position // chunk_len - chunks_before)
    logits = jnp.einsum("hd,hsd->hs", q, cache["k"], preferred_element_type=jnp.float32)
    logits = jnp.where(keep[None], logits, MASK_VALUE)
    if self_mask:
      logits = jnp.where((pos == position)[None], jnp.float32(SELF_MASK_VALUE), logits)
    probs, _ = softmax_lse(logits)
    return jnp.einsum("hs,hsd->hd", probs.astype(v.dtype), cache["v"]), cache

  return jax.vmap(one)(cache, q, k, v, positions.astype(jnp.int32))
