"""Helpers shared by the chunked attentions: padding to a chunk multiple and look-around.

Mask convention used across `reformer_jax.layers`: a `mask` of shape `[batch, length]` is
boolean with True for real tokens and False for padding (Hugging Face's `attention_mask == 1`).
Masked logits are *replaced* (not offset) by `MASK_VALUE`; a query's own key by
`SELF_MASK_VALUE`, so it attends to itself only when every other key is masked.
"""
import functools
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp

from reformer_jax.layers import xla_cpu

MASK_VALUE = -1e9
SELF_MASK_VALUE = -1e5


def check_sequence(x: jnp.ndarray, **sizes: int) -> None:
  """Raises ValueError unless `x` is `[batch, length, d_model]` with `length >= 1` and every
  size given by name (e.g. `n_heads=`, `d_head=`) is >= 1. Checks static shapes only."""
  for name, size in sizes.items():
    if size < 1:
      raise ValueError(f"{name} must be >= 1, got {size}")
  if x.ndim != 3:
    fix = "add a batch axis (x[None])" if x.ndim == 2 else "reshape it"
    raise ValueError(f"x must be [batch, length, d_model], got shape {tuple(x.shape)}; {fix}")
  if x.shape[1] < 1:
    raise ValueError(f"x must have at least one position, got shape {tuple(x.shape)}; drop "
                     "empty sequences before calling the layer")


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


def to_bits(t: jnp.ndarray) -> jnp.ndarray:
  """A 16-bit float array as its uint16 bits (other arrays unchanged).

  For arrays a loop only slices or gathers from: XLA:CPU upcasts bfloat16 arithmetic to
  float32 and would hoist a float32 copy of the whole array out of the loop; bits are
  moved, not converted.
  """
  if (jnp.issubdtype(t.dtype, jnp.floating) and t.dtype.itemsize == 2
      and xla_cpu.kept("bits_moves")):
    return jax.lax.bitcast_convert_type(t, jnp.uint16)
  return t


def from_bits(t: jnp.ndarray, dtype) -> jnp.ndarray:
  """Inverse of `to_bits`: `t` reinterpreted as `dtype` if it is not already."""
  return jax.lax.bitcast_convert_type(t, dtype) if t.dtype != dtype else t


def zeros_after(shape, dtype, *refs: jnp.ndarray) -> jnp.ndarray:
  """Zeros of `shape`, made from the first elements of `refs`: computed after them.

  The output buffer of an in-place loop. A constant `jnp.zeros` is merged (CSE) with the
  other loops' and scheduled at the start of the enclosing computation, with one copy per
  loop, all alive at once. A value that depends on data (zeros unless a `refs[i][0]` is
  NaN, or the smallest integer, and then NaN or 1) is allocated where it is needed and
  aliased in place. Constant refs fold away: pass at least one computed array.
  """
  if not xla_cpu.kept("ties"):
    return jnp.zeros(shape, dtype)
  flag = jnp.bool_(False)
  for ref in refs:
    first = jnp.ravel(ref)[0]
    if jnp.issubdtype(first.dtype, jnp.inexact):
      flag = flag | (first != first)
    else:  # `first < first` would fold to a constant
      flag = flag | (first == jnp.iinfo(first.dtype).min)
  poison = jnp.nan if jnp.issubdtype(dtype, jnp.inexact) else 1
  return jnp.where(flag, jnp.asarray(poison, dtype), jnp.zeros(shape, dtype))


def map_positions(fn: Callable[..., Any], params: Any, inputs: Any, chunk_len: int,
                  axis: int = 1) -> Any:
  """`fn` over chunks of positions, one chunk alive at a time, in both passes.

  The forward pass loops over the chunks, slicing the inputs and writing the outputs in
  place; the backward pass loops again, recomputing each chunk under `jax.vjp`, writing
  the inputs' gradients in place and summing the parameters' (a `custom_vjp`). Only the
  inputs and parameters are kept for the backward pass; no transposed or stacked copy of
  them is made. The backward pass starts after the forward pass's outputs exist, also
  where nothing differentiated reads them (a loss summed for the metrics).

  Args:
    fn: pure `fn(params, chunk_inputs, index) -> outputs`, every output `[batch, chunk,
      ...]` (the positions on axis 1). Position-wise: chunk `index`'s outputs depend
      only on its inputs. It must not close over traced values: pass them in `params`.
    params: pytree of arrays differentiated through (or None).
    inputs: pytree of arrays sharing a length axis `axis` (integer ones are not
      differentiated).
    chunk_len: positions per chunk (clamped to the length); the length is padded to a
      multiple and the outputs sliced back.
    axis: the length axis of every input.

  Returns:
    `fn`'s outputs over all positions, `[batch, length, ...]`.
  """
  length = jax.tree.leaves(inputs)[0].shape[axis]
  if chunk_len < 1:
    raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
  chunk = min(chunk_len, length)
  padded = pad_length(length, chunk)
  if padded == chunk:
    return fn(params, inputs, jnp.int32(0))
  inputs = jax.tree.map(lambda t: pad_axis(t, padded, axis=axis), inputs)
  outputs = _mapped(fn, params, inputs, chunk, axis)
  return jax.tree.map(lambda y: y[:, :length], outputs)


def _cut(bits, dtype, start, size, axis):
  """`[start, start + size)` along `axis` of `to_bits` data, as `dtype`."""
  return from_bits(jax.lax.dynamic_slice_in_dim(bits, start, size, axis=axis), dtype)


def _mapped_forward(fn, params, inputs, chunk, axis):
  padded = jax.tree.leaves(inputs)[0].shape[axis]
  dtypes = jax.tree.map(lambda t: t.dtype, inputs)
  bits = jax.tree.map(to_bits, inputs)  # 16-bit floats are only moved in the loops
  step = lambda i: fn(params, jax.tree.map(
      lambda t, d: _cut(t, d, i * chunk, chunk, axis), bits, dtypes), i)
  ref = jax.tree.leaves(inputs)[0]
  full = lambda s: to_bits(zeros_after(s.shape[:1] + (padded,) + s.shape[2:], s.dtype, ref))

  def body(i, outs):
    return jax.tree.map(lambda o, y: jax.lax.dynamic_update_slice_in_dim(o, to_bits(y),
                                                                         i * chunk, 1),
                        outs, step(i))

  shapes = jax.eval_shape(step, jnp.int32(0))
  outs = jax.lax.fori_loop(0, padded // chunk, body, jax.tree.map(full, shapes))
  return jax.tree.map(lambda o, s: from_bits(o, s.dtype), outs, shapes)


def _differentiable(t) -> bool:
  return jnp.issubdtype(t.dtype, jnp.inexact)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3, 4))
def _mapped(fn, params, inputs, chunk, axis):
  return _mapped_forward(fn, params, inputs, chunk, axis)


def _mapped_fwd(fn, params, inputs, chunk, axis):
  outputs = _mapped_forward(fn, params, inputs, chunk, axis)
  # One element of the outputs, for the backward pass to start after them (`zeros_after`):
  # outputs that nothing differentiated reads (a loss summed for the metrics) would
  # otherwise be computed at the end of the step, keeping the inputs alive meanwhile.
  done = jnp.ravel(jax.tree.leaves(outputs)[0])[0]
  return outputs, (params, inputs, done)


def _mapped_bwd(fn, chunk, axis, residuals, cotangents):
  params, inputs, done = residuals
  residuals = params, inputs
  leaves, treedef = jax.tree.flatten(residuals)
  diff = [_differentiable(t) for t in leaves]
  n_params = len(jax.tree.leaves(params))
  padded = jax.tree.leaves(inputs)[0].shape[axis]

  dtypes = [t.dtype for t in leaves]
  bits = [t if k < n_params else to_bits(t) for k, t in enumerate(leaves)]
  ct_dtypes = jax.tree.map(lambda c: c.dtype, cotangents)
  ct_bits = jax.tree.map(to_bits, cotangents)

  def body(i, carry):
    d_params, d_inputs = carry
    at_i = [t if k < n_params else _cut(t, dtypes[k], i * chunk, chunk, axis)
            for k, t in enumerate(bits)]

    def f(floats):
      it = iter(floats)
      merged = [next(it) if d else t for t, d in zip(at_i, diff)]
      p, x = jax.tree.unflatten(treedef, merged)
      return fn(p, x, i)

    _, vjp = jax.vjp(f, [t for t, d in zip(at_i, diff) if d])
    cts = jax.tree.map(lambda c, d: _cut(c, d, i * chunk, chunk, 1), ct_bits, ct_dtypes)
    grads = iter(vjp(cts)[0])
    d_params = [acc + next(grads) for acc in d_params]
    d_inputs = [jax.lax.dynamic_update_slice_in_dim(
        acc, to_bits(next(grads).astype(d)), i * chunk, axis)
                for acc, d in zip(d_inputs, input_dtypes)]
    return d_params, d_inputs

  refs = (jax.tree.leaves(cotangents)[0], jax.tree.leaves(inputs)[0], done)
  input_dtypes = [t.dtype for t, d in zip(leaves[n_params:], diff[n_params:]) if d]
  zeros = ([jnp.zeros_like(t) for t, d in zip(leaves[:n_params], diff) if d],
           [to_bits(zeros_after(t.shape, t.dtype, *refs))
            for t, d in zip(leaves[n_params:], diff[n_params:]) if d])
  d_params, d_inputs = jax.lax.fori_loop(0, padded // chunk, body, zeros)
  d_inputs = [from_bits(g, d) for g, d in zip(d_inputs, input_dtypes)]
  it = iter(d_params + d_inputs)
  grads = [next(it) if d else None for d in diff]
  return jax.tree.unflatten(treedef, grads)


_mapped.defvjp(_mapped_fwd, _mapped_bwd)
