"""Helpers shared by the chunked attentions: padding to a chunk multiple and look-around.

Mask convention used across `reformer_jax.layers`: a `mask` of shape `[batch, length]` is
boolean with True for real tokens and False for padding (Hugging Face's `attention_mask == 1`).
Masked logits are *replaced* (not offset) by `MASK_VALUE`; a query's own key by
`SELF_MASK_VALUE`, so it attends to itself only when every other key is masked.
"""
from typing import Optional, Tuple

import jax.numpy as jnp

MASK_VALUE = -1e9
SELF_MASK_VALUE = -1e5


def pad_length(length: int, multiple: int) -> int:
  """Smallest multiple of `multiple` that is >= `length`."""
  return -(-length // multiple) * multiple


def pad_axis(x: jnp.ndarray, target: int, axis: int, value=0) -> jnp.ndarray:
  """Pads `x` along `axis` at the end to size `target` with `value`."""
  extra = target - x.shape[axis]
  if extra < 0:
    raise ValueError(f"cannot pad axis {axis} of size {x.shape[axis]} down to {target}")
  if extra == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths, constant_values=value)


def split_chunks(x: jnp.ndarray, chunk_len: int, axis: int) -> jnp.ndarray:
  """Reshapes axis `axis` of size n·chunk_len into (n, chunk_len)."""
  axis = axis % x.ndim
  n = x.shape[axis]
  if n % chunk_len:
    raise ValueError(f"length {n} is not a multiple of chunk_len {chunk_len}; pad first")
  return x.reshape(x.shape[:axis] + (n // chunk_len, chunk_len) + x.shape[axis + 1:])


def look_around(chunks: jnp.ndarray, n_before: int, n_after: int, wrap: bool,
                fill=0) -> jnp.ndarray:
  """Concatenates each chunk with its neighbours along the within-chunk axis.

  Args:
    chunks: `[batch, heads, n_chunks, chunk_len, ...]` (the chunk axis is 2).
    n_before: chunks looked back at.
    n_after: chunks looked ahead at.
    wrap: if True chunk 0 looks back at the last chunk (trax / Hugging Face behaviour);
      if False the out-of-range neighbours are filled with `fill`.
    fill: value for out-of-range neighbours when `wrap` is False.

  Returns:
    `[batch, heads, n_chunks, (n_before + 1 + n_after) * chunk_len, ...]`, ordered
    before-chunks (oldest first), the chunk itself, after-chunks.
  """
  axis = 2
  n_chunks = chunks.shape[axis]
  pieces = []
  for shift in list(range(-n_before, 0)) + [0] + list(range(1, n_after + 1)):
    pieces.append(_shift_chunks(chunks, shift, axis, n_chunks, wrap, fill))
  return jnp.concatenate(pieces, axis=axis + 1)


def _shift_chunks(chunks, shift, axis, n_chunks, wrap, fill):
  """Returns y with y[i] = chunks[i + shift] (wrapped, or `fill` out of range)."""
  if shift == 0:
    return chunks
  if wrap:
    return jnp.roll(chunks, -shift, axis=axis)
  if abs(shift) >= n_chunks:
    return jnp.full_like(chunks, fill)
  idx = [slice(None)] * chunks.ndim
  pad = [(0, 0)] * chunks.ndim
  if shift > 0:
    idx[axis] = slice(shift, None)
    pad[axis] = (0, shift)
  else:
    idx[axis] = slice(None, n_chunks + shift)
    pad[axis] = (-shift, 0)
  return jnp.pad(chunks[tuple(idx)], pad, constant_values=fill)


def replace_masked(logits: jnp.ndarray, keep: Optional[jnp.ndarray],
                   value: float) -> jnp.ndarray:
  """`logits` where `keep` is True, `value` elsewhere (no-op when `keep` is None)."""
  if keep is None:
    return logits
  return jnp.where(keep, logits, jnp.asarray(value, logits.dtype))


def chunk_positions(length: int, chunk_len: int) -> Tuple[int, int]:
  """(padded_length, n_chunks) for a sequence of `length` split into `chunk_len` pieces."""
  padded = pad_length(length, chunk_len)
  return padded, padded // chunk_len
