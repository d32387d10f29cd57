"""Output projection fused with cross-entropy, chunked over positions.

The `[batch, length, vocab]` logits of a long sequence can outweigh every other activation
of a Reformer. `chunked_cross_entropy` computes them for `chunk_len` positions at a time
inside a `lax.scan` whose body is rematerialised (`jax.checkpoint`), so the forward and
the backward pass each hold the logits of one `[batch, chunk_len, vocab]` chunk.
"""
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from reformer_jax.layers.chunking import pad_axis, pad_length


def _chunk_sums(hidden, kernel, bias, targets, weights):
  """Weighted (loss, correct) sums of one chunk; hidden `[b, c, d]`, targets/weights `[b, c]`."""
  logits = jnp.einsum("bcd,dv->bcv", hidden, kernel.astype(hidden.dtype),
                      preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)[None, None, :]
  lse = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  loss = jnp.sum((lse - target_logit) * weights)
  correct = jnp.sum((jnp.argmax(logits, axis=-1) == targets) * weights)
  return loss, correct


def chunked_cross_entropy(hidden: jnp.ndarray, kernel: jnp.ndarray, bias: Optional[jnp.ndarray],
                          targets: jnp.ndarray, weights: Optional[jnp.ndarray] = None,
                          chunk_len: int = 4096) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Sums of weighted cross-entropy of `hidden @ kernel + bias` against `targets`.

  Args:
    hidden: `[batch, length, d]` final hidden states.
    kernel: `[d, vocab]` output projection.
    bias: `[vocab]` or None.
    targets: `[batch, length]` int token ids.
    weights: `[batch, length]` float weights (e.g. the padding mask); None = ones.
    chunk_len: positions per chunk; the length is padded (with weight 0) to a multiple.

  Returns:
    `(loss_sum, weight_sum, correct_sum)` float32 scalars: sum of weighted cross-entropy,
    sum of weights, and weighted count of positions whose argmax equals the target.
  """
  if hidden.ndim != 3 or kernel.ndim != 2 or hidden.shape[-1] != kernel.shape[0]:
    raise ValueError(f"need hidden [batch, length, d] and kernel [d, vocab]; got hidden "
                     f"{hidden.shape}, kernel {kernel.shape}")
  if bias is not None and bias.shape != kernel.shape[1:]:
    raise ValueError(f"bias must be [vocab] = {kernel.shape[1:]}, got {bias.shape}")
  if targets.shape != hidden.shape[:2]:
    raise ValueError(f"targets must be [batch, length] = {hidden.shape[:2]}, got {targets.shape}")
  if weights is None:
    weights = jnp.ones(targets.shape, jnp.float32)
  if weights.shape != targets.shape:
    raise ValueError(f"weights must be [batch, length] = {targets.shape}, got {weights.shape}")
  if not isinstance(chunk_len, int) or chunk_len < 1:
    raise ValueError(f"chunk_len must be a positive int, got {chunk_len!r}")
  weights = weights.astype(jnp.float32)
  length = hidden.shape[1]
  chunk_len = min(chunk_len, length)
  padded = pad_length(length, chunk_len)
  n_chunks = padded // chunk_len

  def to_chunks(x):  # [b, L, ...] -> [n_chunks, b, chunk_len, ...]
    x = pad_axis(x, padded, axis=1)
    x = x.reshape(x.shape[:1] + (n_chunks, chunk_len) + x.shape[2:])
    return jnp.swapaxes(x, 0, 1)

  sums = jax.checkpoint(_chunk_sums)

  def body(carry, xs):
    h, t, w = xs
    loss, correct = sums(h, kernel, bias, t, w)
    return (carry[0] + loss, carry[1] + correct), None

  zero = jnp.zeros((), jnp.float32)
  (loss, correct), _ = jax.lax.scan(
      body, (zero, zero), (to_chunks(hidden), to_chunks(targets), to_chunks(weights)))
  return loss, jnp.sum(weights), correct
