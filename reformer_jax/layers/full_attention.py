"""Full O(L^2) self-attention: the baseline and the exact oracle for LSH attention.

Masking follows Hugging Face's Reformer: masked logits are *replaced* by `MASK_VALUE` (-1e9)
and, for shared query-key attention, a query's own key by `SELF_MASK_VALUE` (-1e5) so a
token attends to itself only when every other key is masked. Logits, logsumexp and
softmax are computed in float32 whatever the activation dtype.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax.layers import logical_axes
from reformer_jax.layers.chunking import (MASK_VALUE, SELF_MASK_VALUE, check_sequence,
                                          replace_masked)
from reformer_jax.layers.dense import FROM_HEADS, TO_HEADS
from reformer_jax.layers.dropout import dropout
from reformer_jax.layers.kv_cache import (RING, DecodeMode, Prefill, Step, cached_step,
                                          check_decodable, fill_ring, ring_attention,
                                          write_cache)
from reformer_jax.layers.softmax import softmax_lse


def attend(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, keep: Optional[jnp.ndarray],
           is_self: Optional[jnp.ndarray] = None, dropout_rate: float = 0.,
           dropout_rng: Optional[jax.Array] = None) -> jnp.ndarray:
  """Softmax attention over the last-but-one axis with replacement masks.

  Args:
    q: queries `[..., n_queries, d_head]`.
    k: keys `[..., n_keys, d_head]` (already scaled).
    v: values `[..., n_keys, d_head]`.
    keep: bool broadcastable to `[..., n_queries, n_keys]` (same rank), True = attend;
      False logits become `MASK_VALUE`. None keeps everything.
    is_self: bool broadcastable like `keep`, True where the key is the query's own
      position; those logits become `SELF_MASK_VALUE` (applied after `keep`, as in HF).
    dropout_rate: dropout on the attention probabilities.
    dropout_rng: rng for that dropout; None disables it.

  Returns:
    `[..., n_queries, d_head]` in `v.dtype`.
  """
  logits = jnp.einsum("...qd,...kd->...qk", q, k, preferred_element_type=jnp.float32)
  logits = replace_masked(logits, keep, MASK_VALUE)
  if is_self is not None:
    logits = jnp.where(is_self, jnp.asarray(SELF_MASK_VALUE, logits.dtype), logits)
  probs = dropout(softmax_lse(logits)[0], dropout_rate, dropout_rng)
  return jnp.einsum("...qk,...kd->...qd", probs.astype(v.dtype), v)


def full_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, *, causal: bool = False,
                   mask: Optional[jnp.ndarray] = None, self_mask: bool = False,
                   dropout_rate: float = 0., dropout_rng: Optional[jax.Array] = None
                   ) -> jnp.ndarray:
  """Plain multi-head self-attention.

  Args:
    q, k, v: `[batch, length, n_heads, d_head]`; `k` already scaled / normalised.
    causal: key j is visible to query i iff j <= i.
    mask: `[batch, length]` bool, False = padding key (masked with -1e9). None = all real.
    self_mask: replace each query's own-position logit by -1e5 (shared-QK attention).
    dropout_rate: attention-probability dropout.
    dropout_rng: rng for the dropout; None disables it.

  Returns:
    `[batch, length, n_heads, d_head]`.
  """
  if q.shape != k.shape or k.shape[:-1] != v.shape[:-1]:
    raise ValueError(f"q, k must have the same shape and v the same [batch, length, n_heads]; "
                     f"got q {q.shape}, k {k.shape}, v {v.shape}")
  length = q.shape[1]
  q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))  # [b, h, L, d]
  pos = jnp.arange(length)
  keep = None
  if causal:
    keep = (pos[None, :] <= pos[:, None])[None, None]
  if mask is not None:
    if mask.shape != q.shape[:1] + (length,):
      raise ValueError(f"mask must be [batch, length] = {(q.shape[0], length)}, got {mask.shape}")
    key_keep = mask.astype(bool)[:, None, None, :]
    keep = key_keep if keep is None else keep & key_keep
  is_self = (pos[:, None] == pos[None, :])[None, None] if self_mask else None
  out = attend(q, k, v, keep, is_self, dropout_rate, dropout_rng)
  return jnp.swapaxes(out, 1, 2)


def normalize_shared_keys(qk: jnp.ndarray) -> jnp.ndarray:
  """Shared-QK keys: `qk * rsqrt(mean(qk^2, -1) + 1e-6) / sqrt(d_head)` (HF), float32 stats."""
  x = qk.astype(jnp.float32)
  x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)
  return (x / jnp.sqrt(jnp.float32(qk.shape[-1]))).astype(qk.dtype)


def split_heads(x: jnp.ndarray, n_heads: int, d_head: int) -> jnp.ndarray:
  """`[batch, length, n_heads * d_head]` -> `[batch, length, n_heads, d_head]`."""
  return x.reshape(x.shape[:-1] + (n_heads, d_head))


class FullSelfAttention(nn.Module):
  """Multi-head O(L^2) self-attention with no biases.

  With `shared_qk=False` the parameters are `query`, `key`, `value`, `out` (like local
  attention) and keys are scaled by 1/sqrt(d_head). With `shared_qk=True` they are
  `query_key`, `value`, `out`, named and shaped exactly like `LSHSelfAttention`: keys are
  the normalised queries and the own position is soft-masked (-1e5). This is the exact
  oracle for LSH attention and lets an LSH-trained model be evaluated with full attention.

  Cached decoding (`decode=`, causal only; see `kv_cache`) keeps every position's key and
  value (a ring of `cache_len` slots that never wraps): the cost per token grows with the
  position.

  Attributes:
    n_heads: number of heads.
    d_head: size of each head.
    causal: mask future keys.
    shared_qk: share the query and key projection (LSH-compatible).
    attention_dropout: dropout rate on attention probabilities ('dropout' rng).
    deterministic: disables dropout; merged with the call argument.
    dtype: computation dtype (parameters stay float32).
  """
  n_heads: int
  d_head: int
  causal: bool = False
  shared_qk: bool = False
  attention_dropout: float = 0.
  deterministic: Optional[bool] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: Optional[jnp.ndarray] = None,
               deterministic: Optional[bool] = None,
               decode: Optional[DecodeMode] = None) -> jnp.ndarray:
    """`x`: `[batch, length, d_model]`, `mask`: `[batch, length]` -> `[batch, length, d_model]`.

    `decode`: `kv_cache.Prefill` (also writes the 'cache' collection) or `kv_cache.Step`
    (`x` `[batch, 1, d_model]`: attends from the cache and updates it); deterministic.
    """
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    check_sequence(x, n_heads=self.n_heads, d_head=self.d_head)
    if decode is not None:
      check_decodable(self, decode, self.causal, deterministic, x.shape[1])
    d_model = x.shape[-1]
    x = x.astype(self.dtype)
    def dense(name):
      logical_axes.declare(self, name, {"kernel": TO_HEADS})
      return nn.Dense(self.n_heads * self.d_head, use_bias=False, dtype=self.dtype, name=name)

    if self.shared_qk:
      q = split_heads(dense("query_key")(x), self.n_heads, self.d_head)
      k = normalize_shared_keys(q)
    else:
      q = split_heads(dense("query")(x), self.n_heads, self.d_head)
      k = split_heads(dense("key")(x), self.n_heads, self.d_head)
      k = k / jnp.sqrt(jnp.asarray(self.d_head, k.dtype))
    v = split_heads(dense("value")(x), self.n_heads, self.d_head)
    if isinstance(decode, Prefill):
      k_rows, v_rows = (jnp.swapaxes(t, 1, 2) for t in (k, v))  # [b, h, P, d_head]
      write_cache(self, fill_ring(k_rows, v_rows, decode.lengths, decode.cache_len))
    rng = None
    if not deterministic and self.attention_dropout > 0.:
      rng = self.make_rng("dropout")
    if isinstance(decode, Step):
      out = cached_step(self, RING, ring_attention, *(t[:, 0] for t in (q, k, v)),
                        decode.positions, self_mask=self.shared_qk)[:, None]
    else:
      out = full_attention(q, k, v, causal=self.causal, mask=mask, self_mask=self.shared_qk,
                           dropout_rate=self.attention_dropout, dropout_rng=rng)
    out = out.reshape(out.shape[:2] + (self.n_heads * self.d_head,))
    logical_axes.declare(self, "out", {"kernel": FROM_HEADS})
    return nn.Dense(d_model, use_bias=False, dtype=self.dtype, name="out")(out)
