"""Cached decoding of `ReformerLM`: a prefill pass over the prompt, then one token per step.

The reversible stack in the forward direction is `y1 = x1 + F(x2)`, `y2 = x2 + G(y1)`,
position by position except inside attention, so a new position needs from earlier ones
only what its attention can see. Per layer the cache keeps exactly that, in fixed-size
arrays (`init_cache`):

- local attention (and "full"): a ring of the last `slots` positions' keys, values and
  positions. A query at p in chunk c = p // chunk_len sees positions of chunks
  c - n_chunks_before .. c up to p, all among the last `(n_chunks_before + 1) * chunk_len`
  positions; "full" keeps every position (`slots` = the generation length).
- strictly causal LSH attention: in round r a query sees only its own bucket's latest
  `W = n_chunks_before * chunk_len` earlier positions (the stable sort orders a bucket's
  entries by position) and itself (logit -1e5). The cache holds the normalised keys and
  values of every position, and per head, round and bucket a ring of the positions of its
  last W + 1 entries with the bucket's count (the j-th position of a bucket lies in slot
  j mod (W + 1)). A new query is hashed with the same rotations, added to its rings, and
  attends to their entries (itself with logit -1e5), and the rounds are combined with weights softmax_r(logsumexp_r), as
  `lsh_core`; with `correct_duplicates` a key's logit loses log(number of rounds whose
  ring holds it). Cost per token O(n_hashes * W), flat in position.
- "shared_qk_full", and LSH when the whole generation fits in one chunk (the forward pass
  then uses plain shared-QK attention): every earlier position, own logit -1e5.

This reproduces `ReformerLM` on the generation buffer: the logits at position p equal
those of the full model run on `total_len` tokens (any tokens after p: it is strictly
causal) with the same LSH rotations and the same `n_buckets` (resolved once, see
`decoding_config`), up to float rounding. Models whose LSH is not strictly causal
(`strict_causal=False`: HF's chunk windows see later tokens) and non-causal models are
refused by `check_cacheable`.
"""
import dataclasses
import math
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp

from reformer_jax.layers.chunking import MASK_VALUE, SELF_MASK_VALUE, pad_length
from reformer_jax.layers.dense import dense, layer_norm, output_projection
from reformer_jax.layers.full_attention import normalize_shared_keys
from reformer_jax.layers.local_attention import _project_qkv
from reformer_jax.layers.lsh_attention import (_bucket_factors, _hash_rows,
                                               _project_shared_qk, draw_rotations,
                                               resolve_n_buckets)
from reformer_jax.layers.positional import (AxialPositionalEmbedding,
                                            LearnedPositionalEmbedding, lookup,
                                            sinusoidal_positions)
from reformer_jax.layers.softmax import softmax_lse
from reformer_jax.models.config import ReformerConfig, position_limit
from reformer_jax.models.reformer_lm import AttentionBlock, FeedForwardBlock, LMHead

Cache = List[Dict[str, jnp.ndarray]]


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


@dataclasses.dataclass(frozen=True)
class _LayerPlan:
  """Static layout of one layer's cache.

  kind "window": a ring of `slots` positions (keys `k`, values `v`, positions `pos`);
  a query at p sees those in chunks >= p // chunk_len - chunks_before (all if
  chunk_len is 0), with its own logit -1e5 if `shared_qk`. kind "lsh": keys and values of
  all `slots` positions and per bucket a ring of `window` positions.
  """
  attention_type: str
  kind: str
  slots: int
  shared_qk: bool = False
  chunk_len: int = 0
  chunks_before: int = 0
  window: int = 0
  n_buckets: int = 0

  @property
  def slots_per_bucket(self) -> int:
    """LSH rings hold the last W + 1 entries: a new query's W and itself."""
    return self.window + 1


def _layer_plans(config: ReformerConfig, total_len: int) -> Tuple[_LayerPlan, ...]:
  plans = []
  for kind in config.layer_attention_types():
    if kind == "local":
      plans.append(_LayerPlan(kind, "window", (config.local_n_chunks_before + 1)
                              * config.local_chunk_len, chunk_len=config.local_chunk_len,
                              chunks_before=config.local_n_chunks_before))
    elif kind == "full":
      plans.append(_LayerPlan(kind, "window", total_len))
    elif kind == "shared_qk_full" or total_len <= config.lsh_chunk_len:
      plans.append(_LayerPlan(kind, "window", total_len, shared_qk=True))
    else:
      plans.append(_LayerPlan(kind, "lsh", total_len,
                              window=config.lsh_n_chunks_before * config.lsh_chunk_len,
                              n_buckets=math.prod(_bucket_factors(config.n_buckets))))
  return tuple(plans)


def init_cache(config: ReformerConfig, batch: int, total_len: int) -> Cache:
  """Zero caches for `batch` sequences of up to `total_len` positions, one dict per layer.

  `config` as given by `decoding_config`. Shapes: "window" layers `k`, `v` `[batch, heads,
  slots, d_head]` (config.dtype) and `pos` int32 `[batch, slots]` (-1: empty); "lsh"
  layers `k`, `v` `[batch, heads, total_len, d_head]`, `ring` int32 `[batch, heads,
  n_hashes, n_buckets, W + 1]` and `count` int32 `[batch, heads, n_hashes, n_buckets]`.
  """
  heads, d = config.n_heads, config.d_head
  cache = []
  for plan in _layer_plans(config, total_len):
    layer = {"k": jnp.zeros((batch, heads, plan.slots, d), config.dtype),
             "v": jnp.zeros((batch, heads, plan.slots, d), config.dtype)}
    if plan.kind == "window":
      layer["pos"] = jnp.full((batch, plan.slots), -1, jnp.int32)
    else:
      rounds = (batch, heads, config.n_hashes, plan.n_buckets)
      layer["ring"] = jnp.zeros(rounds + (plan.slots_per_bucket,), jnp.int32)
      layer["count"] = jnp.zeros(rounds, jnp.int32)
    cache.append(layer)
  return cache


def cache_bytes(cache: Cache) -> int:
  """Bytes held by a cache."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))


def _attention_params(config: ReformerConfig, block: Dict[str, Any], plan: _LayerPlan):
  """`(params, out kernel [h, d_head, d_model])` of an attention block's parameters, in the
  layout of `_project_shared_qk` / `_project_qkv` (norm, kernels `[d_model, h, d_head]`)."""
  heads = (config.n_heads, config.d_head)
  kernels = block["attention"]
  params = {"norm": (block["norm"]["scale"], block["norm"]["bias"])}
  names = ("query_key", "value") if plan.attention_type == "lsh" or plan.shared_qk \
      else ("query", "key", "value")
  for name in names:
    params[name] = kernels[name]["kernel"].reshape((config.d_model,) + heads)
  return params, kernels["out"]["kernel"].reshape(heads + (config.d_model,))


def _project(config: ReformerConfig, plan: _LayerPlan, params, x: jnp.ndarray):
  """(query, key, value) `[b, h, m, d_head]` of block inputs `x` `[b, m, d_model]`."""
  if plan.attention_type in ("lsh", "shared_qk_full"):
    qk, v = _project_shared_qk(params, x[:, None], eps=config.layer_norm_eps,
                               dtype=config.dtype)
    return qk, normalize_shared_keys(qk), v
  if plan.attention_type == "local":
    return _project_qkv(params, x[:, None], eps=config.layer_norm_eps, dtype=config.dtype)
  # "full": FullSelfAttention's projections of the block's LayerNorm output.
  h = layer_norm(x, *params["norm"], config.layer_norm_eps).astype(config.dtype)
  q, k, v = (dense(h, params[n].reshape(config.d_model, -1)).reshape(
      h.shape[:2] + params[n].shape[1:]).transpose(0, 2, 1, 3) for n in ("query", "key", "value"))
  return q, k / jnp.sqrt(jnp.asarray(config.d_head, k.dtype)), v


def _hash(config: ReformerConfig, params, x: jnp.ndarray, rotations) -> jnp.ndarray:
  """Buckets int32 `[b, h, n_hashes, m]` of block inputs `x` `[b, m, d_model]`, computed as
  `LSHSelfAttention` hashes them."""
  rows = layer_norm(x, *params["norm"], config.layer_norm_eps)
  kernel = params["query_key"]
  qk = dense(rows.astype(config.dtype),
             kernel.reshape(kernel.shape[0], -1).astype(config.dtype))
  qk = qk.reshape(x.shape[:2] + kernel.shape[1:])
  buckets = _hash_rows(qk, rotations, _bucket_factors(config.n_buckets))
  return jnp.transpose(buckets, (0, 2, 3, 1))


def _fill_window(plan: _LayerPlan, k, v, length):
  """One sequence's ring from its prompt: `k`, `v` `[h, P, d]`, `length` real positions."""
  slot = jnp.arange(plan.slots, dtype=jnp.int32)
  last = slot + plan.slots * ((length - 1 - slot) // plan.slots)
  pos = jnp.where(slot <= length - 1, last, -1)
  take = lambda t: jnp.take(t, jnp.clip(pos, 0, k.shape[1] - 1), axis=1)
  return {"k": take(k), "v": take(v), "pos": pos}


def _fill_lsh(plan: _LayerPlan, cache, k, v, buckets, length):
  """One sequence's LSH cache from its prompt: `k`, `v` `[h, P, d]`, buckets `[h, r, P]`."""
  prompt = buckets.shape[-1]
  index = jnp.broadcast_to(jnp.arange(prompt, dtype=jnp.int32), buckets.shape)
  buckets = jnp.where(index < length, buckets, plan.n_buckets)  # padding: dropped
  # Entries sorted by (bucket, position); an entry's rank in its bucket gives its slot.
  order = jnp.argsort(buckets, axis=-1, stable=True)
  sorted_buckets = jnp.take_along_axis(buckets, order, axis=-1)
  first = jax.vmap(jax.vmap(lambda s: jnp.searchsorted(s, s, side="left")))(sorted_buckets)
  rank = index - first
  count = jax.vmap(jax.vmap(lambda b: jnp.zeros(plan.n_buckets, jnp.int32).at[b].add(
      1, mode="drop")))(buckets)
  total = jnp.take_along_axis(count, jnp.minimum(sorted_buckets, plan.n_buckets - 1), axis=-1)
  kept = (sorted_buckets < plan.n_buckets) & (rank >= total - plan.slots_per_bucket)
  target = jnp.where(kept, sorted_buckets, plan.n_buckets)
  h, r = jnp.meshgrid(jnp.arange(buckets.shape[0]), jnp.arange(buckets.shape[1]),
                      indexing="ij")
  ring = cache["ring"].at[h[..., None], r[..., None], target,
                          rank % plan.slots_per_bucket].set(
      order.astype(jnp.int32), mode="drop")
  return {"k": cache["k"].at[:, :prompt].set(k), "v": cache["v"].at[:, :prompt].set(v),
          "ring": ring, "count": count}


def _embed(config: ReformerConfig, params, tokens, positions):
  """Embeddings `[b, m, d_model]` (stream dtype) of `tokens` at `positions` `[b, m]`."""
  x = lookup(params["token_embed"]["embedding"], tokens).astype(config.stream_dtype)
  if config.positional == "axial":
    enc = AxialPositionalEmbedding(config.resolved_axial_shape, config.resolved_axial_dims,
                                   config.d_model).apply(
        {"params": params["positional"]}, positions)
  elif config.positional == "learned":
    enc = LearnedPositionalEmbedding(config.max_len, config.d_model).apply(
        {"params": params["positional"]}, positions)
  elif config.positional == "sinusoidal":
    enc = sinusoidal_positions(positions, config.d_model)
  else:
    return x
  return x + enc.astype(x.dtype)


def _feed_forward(config, params, x):
  return FeedForwardBlock(config).apply({"params": params}, x, None, None, deterministic=True)


def _logits(config: ReformerConfig, params, x1, x2):
  """Logits `[b, m, vocab]` of the final streams `[b, m, d_model]`."""
  norm = params["final_norm"]
  h = layer_norm(jnp.concatenate([x1, x2], axis=-1), norm["scale"], norm["bias"],
                 config.layer_norm_eps)
  return LMHead(config.vocab_size, config.lm_head_bias, config.loss_chunk_len,
                config.dtype).apply({"params": params["lm_head"]}, h)


def _layer_rotations(config: ReformerConfig, lsh_rotations):
  """`lsh_rotations` (one array or one per LSH layer) as one entry per layer."""
  types = config.layer_attention_types()
  n_lsh = types.count("lsh")
  if n_lsh and lsh_rotations is None:
    raise ValueError("the model has LSH layers: pass lsh_rotations (draw_lsh_rotations)")
  if not isinstance(lsh_rotations, (list, tuple)):
    lsh_rotations = [lsh_rotations] * n_lsh
  if len(lsh_rotations) != n_lsh:
    raise ValueError(f"lsh_rotations has {len(lsh_rotations)} arrays for {n_lsh} LSH layers")
  per_lsh = iter(lsh_rotations)
  return [next(per_lsh) if t == "lsh" else None for t in types]


def check_total_len(config: ReformerConfig, total_len: int) -> None:
  """Raises ValueError if `total_len` positions do not fit the position table."""
  limit = position_limit(config)
  if limit is not None and total_len > limit:
    raise ValueError(f"{total_len} positions (prompt + new tokens) exceed the model's "
                     f"position table of {limit}; generate fewer tokens or shorten the prompt")


def prefill(config: ReformerConfig, params, tokens: jnp.ndarray, lengths: jnp.ndarray,
            total_len: int, lsh_rotations=None) -> Tuple[jnp.ndarray, Cache]:
  """Runs the prompts and fills the caches.

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
  batch, prompt = tokens.shape
  if prompt > total_len:
    raise ValueError(f"prompts of {prompt} tokens do not fit total_len={total_len}")
  plans = _layer_plans(config, total_len)
  # The forward pass of a sequence longer than one LSH chunk hashes; a shorter prompt is
  # padded (masked) to hash too, which leaves the real positions' outputs unchanged.
  if any(p.kind == "lsh" for p in plans):
    prompt = min(max(prompt, config.lsh_chunk_len + 1), total_len)
    tokens = jnp.pad(tokens, ((0, 0), (0, prompt - tokens.shape[1])))
  positions = jnp.broadcast_to(jnp.arange(prompt, dtype=jnp.int32), (batch, prompt))
  mask = positions < lengths[:, None]
  x1 = x2 = _embed(config, params, tokens, positions)
  cache = init_cache(config, batch, total_len)
  for i, (plan, rotations) in enumerate(zip(plans, _layer_rotations(config, lsh_rotations))):
    layer = params["encoder"][f"layer_{i}"]
    block = AttentionBlock(config, plan.attention_type)
    out = block.apply({"params": layer["attention"]}, x2, {"mask": mask}, rotations, True)
    attn, _ = _attention_params(config, layer["attention"], plan)
    _, k, v = _project(config, plan, attn, x2)
    if plan.kind == "window":
      cache[i] = jax.vmap(lambda k, v, n: _fill_window(plan, k, v, n))(k, v, lengths)
    else:
      buckets = _hash(config, attn, x2, rotations)
      cache[i] = jax.vmap(lambda c, k, v, b, n: _fill_lsh(plan, c, k, v, b, n))(
          cache[i], k, v, buckets, lengths)
    x1 = x1 + out.astype(x1.dtype)
    x2 = x2 + _feed_forward(config, layer["feed_forward"], x1).astype(x2.dtype)
  last = (lengths - 1)[:, None, None]
  x1, x2 = (jnp.take_along_axis(t, last, axis=1) for t in (x1, x2))
  return _logits(config, params, x1, x2)[:, 0], cache


def _window_step(plan: _LayerPlan, q, k, v, position, cache):
  """One sequence's attention at `position` over its ring; q, k, v `[h, d]`."""
  slot = position % plan.slots
  cache = {"k": cache["k"].at[:, slot].set(k), "v": cache["v"].at[:, slot].set(v),
           "pos": cache["pos"].at[slot].set(position)}
  pos = cache["pos"]
  keep = (pos >= 0) & (pos <= position)
  if plan.chunk_len:
    keep = keep & (pos // plan.chunk_len >= position // plan.chunk_len - plan.chunks_before)
  logits = jnp.einsum("hd,hsd->hs", q, cache["k"], preferred_element_type=jnp.float32)
  logits = jnp.where(keep[None], logits, MASK_VALUE)
  if plan.shared_qk:
    logits = jnp.where((pos == position)[None], jnp.float32(SELF_MASK_VALUE), logits)
  probs, _ = softmax_lse(logits)
  return jnp.einsum("hs,hsd->hd", probs.astype(v.dtype), cache["v"]), cache


def _lsh_step(plan: _LayerPlan, correct_duplicates: bool, qk, key, v, buckets, position,
              cache):
  """One sequence's strict causal LSH attention at `position`; qk, key, v `[h, d]`,
  buckets `[h, n_hashes]`.

  The new entry is written first (its key and value, its slot in each round's ring),
  then read back with the others: each update comes before the reads of its buffer, so
  XLA updates the caches in place instead of copying them every step.
  """
  heads, rounds = buckets.shape
  h, r = jnp.meshgrid(jnp.arange(heads), jnp.arange(rounds), indexing="ij")
  count = cache["count"].at[h, r, buckets].add(1)
  entries = count[h, r, buckets]                                # [h, r], >= 1
  ring = cache["ring"].at[h, r, buckets, (entries - 1) % plan.slots_per_bucket].set(position)
  k, v_all = (cache[n].at[:, position].set(t) for n, t in (("k", key), ("v", v)))
  cache = {"k": k, "v": v_all, "ring": ring, "count": count}
  ring = ring[h, r, buckets]                                    # [h, r, W + 1] positions
  valid = jnp.arange(plan.slots_per_bucket)[None, None] < entries[..., None]
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


def decode_step(config: ReformerConfig, params, tokens: jnp.ndarray, positions: jnp.ndarray,
                cache: Cache, lsh_rotations=None) -> Tuple[jnp.ndarray, Cache]:
  """One new token per sequence: `tokens`, `positions` int `[batch]` -> `(logits [batch,
  vocab], cache)`. Each sequence's earlier positions must be in `cache` (`prefill`)."""
  plans = _layer_plans(config, _total_len(config, cache))
  positions = positions.astype(jnp.int32)
  x1 = x2 = _embed(config, params, tokens[:, None], positions[:, None])
  new_cache = []
  for i, (plan, rotations) in enumerate(zip(plans, _layer_rotations(config, lsh_rotations))):
    layer = params["encoder"][f"layer_{i}"]
    attn, w_out = _attention_params(config, layer["attention"], plan)
    q, k, v = (t[:, :, 0] for t in _project(config, plan, attn, x2))  # [b, h, d]
    if plan.kind == "window":
      out, layer_cache = jax.vmap(lambda *a: _window_step(plan, *a))(q, k, v, positions,
                                                                     cache[i])
    else:
      buckets = _hash(config, attn, x2, rotations)[..., 0]  # [b, h, n_hashes]
      out, layer_cache = jax.vmap(
          lambda *a: _lsh_step(plan, config.correct_duplicates, *a))(q, k, v, buckets,
                                                                     positions, cache[i])
    new_cache.append(layer_cache)
    out = output_projection(out[:, :, None], w_out, 0., None, 1, config.dtype)
    x1 = x1 + out.astype(x1.dtype)
    x2 = x2 + _feed_forward(config, layer["feed_forward"], x1).astype(x2.dtype)
  return _logits(config, params, x1, x2)[:, 0], new_cache


def _total_len(config: ReformerConfig, cache: Cache) -> int:
  """The generation length the cache was made for (static, from its shapes)."""
  for plan_type, layer in zip(config.layer_attention_types(), cache):
    if "ring" in layer or plan_type != "local":
      return layer["k"].shape[2]
  return 1  # only local layers: their caches do not depend on it
