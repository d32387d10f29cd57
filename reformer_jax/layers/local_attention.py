"""Local (chunked) self-attention: each chunk attends to itself and its neighbour chunks.

Cost is O(L * chunk_len * (1 + n_chunks_before + n_chunks_after)); the `[L, L]` logits are
never formed. Unlike Hugging Face / trax the look-around does not wrap around (chunk 0
does not see the last chunk): out-of-range keys are masked. With `causal=True` the
wrapped keys are masked anyway, so results then equal HF's.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax.layers.chunking import (chunk_positions, look_around, pad_axis,
                                          split_chunks)
from reformer_jax.layers.full_attention import attend, full_attention, split_heads


def local_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, *, chunk_len: int,
                    n_chunks_before: int = 1, n_chunks_after: int = 0, causal: bool = False,
                    mask: Optional[jnp.ndarray] = None, dropout_rate: float = 0.,
                    dropout_rng: Optional[jax.Array] = None) -> jnp.ndarray:
  """Chunked multi-head self-attention with look-around and no wrap-around.

  Query i in chunk c = i // chunk_len sees the keys of chunks c - n_chunks_before ..
  c + n_chunks_after that exist (and, if causal, are at positions <= i). The sequence is
  padded internally to a multiple of `chunk_len` (padding masked) and sliced back. When
  the padded length is <= chunk_len this is plain attention, as in Hugging Face.

  Args:
    q, k, v: `[batch, length, n_heads, d_head]`; `k` already scaled by 1/sqrt(d_head).
    chunk_len: positions per chunk (>= 1).
    n_chunks_before: chunks looked back at (>= 0).
    n_chunks_after: chunks looked ahead at (>= 0).
    causal: key j is visible to query i iff j <= i.
    mask: `[batch, length]` bool, False = padding key. None = all real.
    dropout_rate: attention-probability dropout.
    dropout_rng: rng for the dropout; None disables it.

  Returns:
    `[batch, length, n_heads, d_head]`.
  """
  if chunk_len < 1:
    raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
  if n_chunks_before < 0 or n_chunks_after < 0:
    raise ValueError(f"n_chunks_before and n_chunks_after must be >= 0, got "
                     f"{n_chunks_before} and {n_chunks_after}")
  if q.shape != k.shape or k.shape[:-1] != v.shape[:-1]:
    raise ValueError(f"q, k must have the same shape and v the same [batch, length, n_heads]; "
                     f"got q {q.shape}, k {k.shape}, v {v.shape}")
  batch, length = q.shape[:2]
  if mask is not None and mask.shape != (batch, length):
    raise ValueError(f"mask must be [batch, length] = {(batch, length)}, got {mask.shape}")
  padded, n_chunks = chunk_positions(length, chunk_len)
  if padded <= chunk_len:
    return full_attention(q, k, v, causal=causal, mask=mask, dropout_rate=dropout_rate,
                          dropout_rng=dropout_rng)

  def chunked(t):  # [b, L, h, d] -> [b, h, n_chunks, chunk_len, d]
    t = pad_axis(jnp.swapaxes(t, 1, 2), padded, axis=2)
    return split_chunks(t, chunk_len, axis=2)

  q, k, v = chunked(q), chunked(k), chunked(v)
  k = look_around(k, n_chunks_before, n_chunks_after, wrap=False)
  v = look_around(v, n_chunks_before, n_chunks_after, wrap=False)

  real = jnp.ones((batch, length), bool) if mask is None else mask.astype(bool)
  real = split_chunks(pad_axis(real, padded, axis=1, value=False)[:, None], chunk_len, axis=2)
  key_real = look_around(real, n_chunks_before, n_chunks_after, wrap=False, fill=False)
  keep = key_real[:, :, :, None, :]  # [b, 1, n_chunks, 1, window]
  if causal:
    q_pos = split_chunks(jnp.arange(padded)[None, None], chunk_len, axis=2)
    k_pos = look_around(q_pos, n_chunks_before, n_chunks_after, wrap=False, fill=padded)
    keep = keep & (k_pos[:, :, :, None, :] <= q_pos[..., None])

  out = attend(q, k, v, keep, dropout_rate=dropout_rate, dropout_rng=dropout_rng)
  out = out.reshape(out.shape[:2] + (padded, out.shape[-1]))[:, :, :length]
  return jnp.swapaxes(out, 1, 2)


class LocalSelfAttention(nn.Module):
  """Multi-head local self-attention (separate Q, K, V; no biases; no self mask).

  Parameters `query`, `key`, `value` (`[d_model, n_heads * d_head]`) and `out`
  (`[n_heads * d_head, d_model]`), as Hugging Face's `LocalSelfAttention` + output dense.

  Attributes:
    n_heads: number of heads.
    d_head: size of each head.
    chunk_len: positions per chunk.
    n_chunks_before: chunks looked back at.
    n_chunks_after: chunks looked ahead at.
    causal: mask future keys.
    attention_dropout: dropout rate on attention probabilities ('dropout' rng).
    deterministic: disables dropout; merged with the call argument.
    dtype: computation dtype (parameters stay float32).
  """
  n_heads: int
  d_head: int
  chunk_len: int = 64
  n_chunks_before: int = 1
  n_chunks_after: int = 0
  causal: bool = False
  attention_dropout: float = 0.
  deterministic: Optional[bool] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: Optional[jnp.ndarray] = None,
               deterministic: Optional[bool] = None) -> jnp.ndarray:
    """`x`: `[batch, length, d_model]`, `mask`: `[batch, length]` -> `[batch, length, d_model]`."""
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    d_model = x.shape[-1]
    x = x.astype(self.dtype)
    proj = lambda name: split_heads(
        nn.Dense(self.n_heads * self.d_head, use_bias=False, dtype=self.dtype, name=name)(x),
        self.n_heads, self.d_head)
    q, k, v = proj("query"), proj("key"), proj("value")
    k = k / jnp.sqrt(jnp.asarray(self.d_head, k.dtype))
    rng = None
    if not deterministic and self.attention_dropout > 0.:
      rng = self.make_rng("dropout")
    out = local_attention(q, k, v, chunk_len=self.chunk_len,
                          n_chunks_before=self.n_chunks_before,
                          n_chunks_after=self.n_chunks_after, causal=self.causal, mask=mask,
                          dropout_rate=self.attention_dropout, dropout_rng=rng)
    out = out.reshape(out.shape[:2] + (self.n_heads * self.d_head,))
    return nn.Dense(d_model, use_bias=False, dtype=self.dtype, name="out")(out)
