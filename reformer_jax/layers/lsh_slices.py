"""LSH attention over a sequence sharded into contiguous slices on a mesh axis (in shard_map).

Exact: every query sees what it sees on one device (`lsh_core`), in both modes (strict
causal windows and Hugging Face's chunk windows, which wrap around the concatenated
rounds), with padding and the duplicate-key correction. On each device of axis
`axis_name` (D devices, slices of n positions, L = D * n):

1. its positions are hashed with the shared rotations (by the caller), and the bucket ids
   (int32 per position, head and round) and padding flags are gathered: every device
   computes the same sort of all R * L (round, position) entries;
2. device d takes the sorted entries `[d R n, (d + 1) R n)` and, around them, the
   `n_chunks_before` / `n_chunks_after` chunks its windows reach (modulo R L, as one
   device's windows wrap) (`sorted_window`);
3. one round (`lsh_slice_block`): a loop over steps of a few sorted chunks, each fetching
   its window's input rows from their owners, attending (the masks use global positions
   and sorted offsets) and adding its outputs' projection into their owners' rows
   (`exchange.ExchangedRows`, `windowed.sliced_block`); the backward pass and the
   reversible rebuild run the same steps. Several rounds (`lsh_slice_core`): the
   window's shared-QK and value rows, `[b, h, R n + halo, 2 d_head]`, come by one
   `exchange.fetch`, the outputs and logsumexps of its own entries go back to their
   positions' owners by another, and each device combines its positions' rounds as
   `lsh_core` does.

No device holds a whole-sequence array of activations: the gathered buckets, positions and
permutations are int32 `[b, h, R L]`.
"""
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from reformer_jax.layers.chunking import map_positions
from reformer_jax.layers.lsh_attention import (_attend_window, _inverse_permutation,
                                               _split_rows, _take, sort_rounds)
from reformer_jax.layers.windowed import (default_chunks_per_step, sliced_block,
                                          windowed_attention)
from reformer_jax.parallel.exchange import ExchangedRows, fetch


def _attend_slice(params, rows, info, offsets, rng, **settings):
  """`_attend_window` with the window's global sorted offsets (`info['offset']`) instead of
  its offsets within this device's window of the sorted order."""
  del offsets
  info = dict(info)
  offsets = info.pop("offset")[0, 0]
  return _attend_window(params, rows, info, offsets, rng, **settings)


def _global_rows(positions, n_local, heads, heads_last):
  """Global row ids of `fetch` for the rows (flattened) `[b, n_local, h]` (`heads_last`)
  or `[b, h, n_local]` of each device, of positions `[b, h, m]` sharded in slices of
  `n_local`."""
  batch = positions.shape[0]
  b = jnp.arange(batch, dtype=jnp.int32)[:, None, None]
  h = jnp.arange(heads, dtype=jnp.int32)[None, :, None]
  if heads_last:
    local = (b * n_local + positions % n_local) * heads + h
  else:
    local = (b * heads + h) * n_local + positions % n_local
  return (positions // n_local * (batch * heads * n_local) + local).reshape(-1)


def _check_slices(n_own, n_hashes, n_local, chunk_len, n_chunks_before, n_chunks_after,
                  axis_name):
  if n_own % chunk_len or max(n_chunks_before, n_chunks_after) * chunk_len > n_own:
    raise ValueError(f"each device's {n_own} sorted entries (slice {n_local} x {n_hashes} "
                     f"rounds) must be whole LSH chunks of {chunk_len}, at least "
                     f"{max(n_chunks_before, n_chunks_after)} of them: pad the sequence to "
                     f"a multiple of chunk_len times the devices of '{axis_name}'")


def sorted_window(buckets: jnp.ndarray, real: jnp.ndarray, *, axis_name: str,
                  chunk_len: int, n_chunks_before: int, n_chunks_after: int, strict: bool,
                  correct_duplicates: bool, n_values: Optional[int] = None, **unused):
  """This device's window of the sorted order (steps 1-2 of the module docstring).

  Returns:
    `(pos, info, undo_idx)`: the global positions `[b, h, before + R n + after]` of its
    own sorted entries `[d R n, (d + 1) R n)` and the halo chunks around them (modulo
    `R L`), their info for `_attend_slice` (global sorted offsets in `info['offset']`),
    and the inverse sort `[b, h, R L]`.
  """
  del unused
  batch, heads, n_hashes, n_local = buckets.shape
  length = n_local * jax.lax.axis_size(axis_name)
  n_sorted, n_own = n_hashes * length, n_hashes * n_local
  before, after = n_chunks_before * chunk_len, n_chunks_after * chunk_len
  _check_slices(n_own, n_hashes, n_local, chunk_len, n_chunks_before, n_chunks_after,
                axis_name)
  everyone = jax.lax.all_gather(buckets, axis_name, axis=3, tiled=True)  # [b, h, R, L]
  order = sort_rounds(everyone, n_values)
  rounds = length * jnp.arange(n_hashes, dtype=jnp.int32)[None, None, :, None]
  sort_idx = (order + rounds).reshape(batch, heads, n_sorted)
  undo_idx = _inverse_permutation(sort_idx)
  positions = order.reshape(batch, heads, n_sorted)

  start = jax.lax.axis_index(axis_name) * n_own - before
  offsets = start + jnp.arange(before + n_own + after, dtype=jnp.int32)
  entries = jnp.broadcast_to(offsets % n_sorted, (batch, heads, offsets.shape[0]))
  pos = _take(positions, entries)
  all_real = jax.lax.all_gather(real, axis_name, axis=1, tiled=True)  # [b, L]
  info = {"pos": pos, "offset": offsets[None, None],
          "real": _take(jnp.broadcast_to(all_real[:, None], (batch, heads, length)), pos)}
  if strict:
    info["bucket"] = _take(everyone.reshape(batch, heads, n_sorted), sort_idx)
    info["bucket"] = _take(info["bucket"], entries)
  if correct_duplicates:
    by_position = lambda t: _take(jnp.swapaxes(t, 2, 3), pos)  # [b, h, m, R]
    info["dup_offsets"] = by_position(undo_idx.reshape(everyone.shape))
    info["dup_buckets"] = by_position(everyone)
  return pos, info, undo_idx


def _attend(settings, n_sorted, project=_split_rows):
  return functools.partial(
      _attend_slice, project=project, n=n_sorted, chunk_len=settings["chunk_len"],
      n_chunks_before=settings["n_chunks_before"], n_chunks_after=settings["n_chunks_after"],
      causal=settings["causal"], strict=settings["strict"],
      dropout_rate=settings["dropout_rate"])


def lsh_slice_core(x: jnp.ndarray, params, project: Callable, buckets: jnp.ndarray,
                   real: jnp.ndarray, *, axis_name: str, dropout_rng: Optional[jax.Array],
                   position_chunk: int, capacity: Optional[int] = None,
                   **settings) -> jnp.ndarray:
  """`lsh_core` of one device's slice of positions (see the module docstring).

  Args:
    x: this slice's rows `[b, n, F]`.
    params, project: `project(params, rows [b, 1, n, F]) -> (qk, v)` `[b, h, n, d_head]`.
    buckets: int32 `[b, h, R, n]` of this slice from `lsh_buckets` (padding bucket, round
      offsets), hashed with the same rotations on every device.
    real: `[b, n]` bool, False = padding.
    axis_name: the mesh axis the sequence is sharded over.
    dropout_rng: the attention dropout's key, or None.
    position_chunk: positions per chunk of the projection (`map_positions`: only `x` is
      kept for the backward pass).
    capacity: rows per device pair and pass of the exchanges (`exchange.fetch`).
    settings: `chunk_len, n_chunks_before, n_chunks_after, causal, strict,
      correct_duplicates, dropout_rate, chunks_per_step, n_values` as in `lsh_core`.

  Returns:
    `[b, h, n, d_head]`.
  """
  batch, heads, n_hashes, n_local = buckets.shape
  length = n_local * jax.lax.axis_size(axis_name)
  n_own = n_hashes * n_local
  before = settings["n_chunks_before"] * settings["chunk_len"]
  pos, info, undo_idx = sorted_window(buckets, real, axis_name=axis_name, **settings)

  def project_rows(params, rows, index):  # [b, c, F] -> [b, c, h, 2 d_head]
    del index
    return jnp.swapaxes(jnp.concatenate(project(params, rows[:, None]), axis=-1), 1, 2)

  rows = map_positions(project_rows, params, x, position_chunk)
  rows = fetch(rows.reshape(-1, rows.shape[-1]), _global_rows(pos, n_local, heads, True),
               axis_name, capacity).reshape(pos.shape + rows.shape[-1:])
  steps = settings["chunks_per_step"] or default_chunks_per_step(
      batch, heads, rows.shape[-1], settings["chunk_len"])
  window = jnp.broadcast_to(jnp.arange(pos.shape[2], dtype=jnp.int32), pos.shape)
  out, lse = windowed_attention(_attend(settings, n_hashes * length), rows, None, window,
                                info, dropout_rng, settings["chunk_len"],
                                settings["n_chunks_before"], settings["n_chunks_after"],
                                steps)

  # Back to the positions' owners: entry u of the sorted order lives on device u // n_own.
  d_head = out.shape[-1]
  own = lambda t: jax.lax.slice_in_dim(t, before, before + n_own, axis=2)
  back = jnp.concatenate([own(out).astype(jnp.float32), own(lse)[..., None]], axis=-1)
  mine = jax.lax.axis_index(axis_name) * n_local + jnp.arange(n_local, dtype=jnp.int32)
  wanted = undo_idx.reshape(batch, heads, n_hashes, length)[..., mine]  # [b, h, R, n]
  back = fetch(back.reshape(-1, d_head + 1),
               _global_rows(wanted.reshape(batch, heads, -1), n_own, heads, False), axis_name,
               capacity).reshape(batch, heads, n_hashes, n_local, d_head + 1)
  out, lse = back[..., :d_head], back[..., d_head]
  if n_hashes == 1:
    return out[:, :, 0].astype(rows.dtype)
  weights = jax.nn.softmax(lse, axis=2)[..., None]
  return jnp.sum(out * weights, axis=2).astype(rows.dtype)


def lsh_slice_block(module, x: jnp.ndarray, params, project: Callable,
                    out_kernel: jnp.ndarray, buckets: jnp.ndarray, real: jnp.ndarray, rngs,
                    rebuild=None, *,
                    axis_name: str, capacity: Optional[int] = None, **settings):
  """The whole attention block (the output projection included) of one device's slice,
  one hashing round, a group of sorted chunks per step (`windowed.sliced_block`): each
  step fetches its window's input rows from their owners, attends, and adds its
  outputs' projections back into their owners' rows (`exchange.ExchangedRows`). No
  sorted copy of the slice is made; the backward pass (and `rebuild`) runs the steps
  again the same way.

  Args:
    module: the bound `LSHSelfAttention` (see `windowed.attention_block`).
    x: this slice's input rows `[b, n, d_model]`.
    params, project: `project(params, rows [b, h, m, d_model]) -> (qk, v)`.
    out_kernel: `[h, d_head, d_model]`.
    buckets: int32 `[b, h, 1, n]` (`lsh_slice_core`); real: `[b, n]` bool.
    rngs: `(attention dropout key, output dropout key)`, each None when unused.
    rebuild: `(y, dx, dy)` of a reversible layer's backward, or None.
    axis_name, capacity, settings: as in `lsh_slice_core`.

  Returns:
    `[b, n, d_model]`; with `rebuild`, `(y - out, dx + dout/dx^T dy, the module's
    parameter gradients, (d scale, d bias))`.
  """
  batch, heads, n_hashes, n_local = buckets.shape
  if n_hashes != 1:
    raise ValueError(f"lsh_slice_block attends one hashing round, got {n_hashes}")
  pos, info, _ = sorted_window(buckets, real, axis_name=axis_name, **settings)
  n_devices = jax.lax.axis_size(axis_name)
  attend = _attend(settings, n_local * n_devices, project)
  # At most a quarter of the slice per step: a step's exchanges move about 1.25 x heads
  # x its window's rows, which must stay well below the slice's own rows.
  steps = settings["chunks_per_step"] or min(
      default_chunks_per_step(batch, heads, x.shape[-1], settings["chunk_len"]),
      max(1, n_local // (4 * settings["chunk_len"])))
  rows = ExchangedRows(batch, n_local, axis_name, capacity)
  before = settings["n_chunks_before"] * settings["chunk_len"]
  return sliced_block(module, attend, x, (params, out_kernel), pos, info, rngs, rows, steps,
                      batch * n_local * n_devices, rebuild, first=before, n_queries=n_local)

