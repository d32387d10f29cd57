"""Moving rows between the devices of a mesh axis: a gather by global row id, and halos.

Inside `shard_map`, each device of axis `axis_name` holds `n_rows` rows of a sequence-
sharded array; row `i` of device `s` has the global id `s * n_rows + i`. `fetch` gives
every device the rows it asks for by global id, in its own order (a distributed gather);
its gradient scatter-adds the cotangents back to the rows' owners (the inverse exchange).

The exchange is `lax.all_to_all` with a static capacity of `capacity` rows per
(source, destination) pair and pass, repeated until every request is served: the number
of passes is the largest pair's request count over `capacity`, computed on every device
alike (a `pmax`), so the result is exact for any requests, however unbalanced; a
balanced pattern (a sorted order of hash buckets) takes one pass. `lax.ragged_all_to_all`
would send exactly the requested rows in one pass, but XLA:CPU does not implement it
(jax 0.10.2: "UNIMPLEMENTED: HLO opcode ragged-all-to-all"). No device ever holds more
than `max(requests, devices * capacity)` rows of the exchanged array.

`halo` is a neighbour exchange (`lax.ppermute`): each device receives the last rows of
the previous device and the first rows of the next.
"""
import functools
import itertools
import math
from typing import List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp


def default_capacity(n_requests: int, n_devices: int, slack: float = 1.25) -> int:
  """Rows per (source, destination) pair and pass: `slack` times an even share."""
  return max(1, math.ceil(slack * n_requests / n_devices))


def _plan(requests, n_rows, axis_name, capacity):
  """The index arithmetic of an exchange, the same in both directions.

  Returns:
    `(send_rows [D, M + C] int32, source [M], slot [M], rank [M], n_passes)`: for each
    destination, the local rows this device sends it, by rank (row 0 where unused); for
    each own request, its source device, its slot `source * C + rank % C` in a received
    buffer and its rank among the requests to the same source; the number of passes.
  """
  n_devices = jax.lax.axis_size(axis_name)
  me = jax.lax.axis_index(axis_name)
  everyone = jax.lax.all_gather(requests, axis_name)  # [D, M] int32
  n_req = requests.shape[0]
  # As a source: each destination's requests to this device, ranked in their order.
  mine = everyone // n_rows == me
  ranks = jnp.cumsum(mine, axis=1, dtype=jnp.int32) - 1
  at = jnp.where(mine, ranks, n_req + capacity)  # out of bounds: dropped
  dest = jnp.broadcast_to(jnp.arange(n_devices, dtype=jnp.int32)[:, None], at.shape)
  send_rows = jnp.zeros((n_devices, n_req + capacity), jnp.int32).at[dest, at].set(
      everyone % n_rows, mode="drop")
  # As a destination: each own request's rank among those to the same source.
  source = requests // n_rows
  rank = jnp.zeros_like(requests)
  largest = jnp.zeros((), jnp.int32)
  for s in range(n_devices):
    to_s = source == s
    count = jnp.cumsum(to_s, dtype=jnp.int32)
    rank = jnp.where(to_s, count - 1, rank)
    largest = jnp.maximum(largest, count[-1])
  n_passes = (jax.lax.pmax(largest, axis_name) + capacity - 1) // capacity
  slot = source * capacity + rank % capacity
  return send_rows, source, slot, rank, n_passes


def _varying(zeros, axis_name):
  """A loop's initial buffer typed as differing between devices (shard_map's check_vma)."""
  return jax.lax.pcast(zeros, axis_name, to="varying")


def _exchange(send, axis_name):
  """`recv[s] = what device s sent this one`, `send` `[D, C, F]`."""
  return jax.lax.all_to_all(send, axis_name, 0, 0, tiled=True)


def _joined(arrays):
  """`[n, F_1 + F_2 + ...]` of arrays `[n, F_i]` in their common dtype, and a function
  splitting such rows back into the arrays' widths and dtypes."""
  dtype = jnp.result_type(*arrays)
  ends = list(itertools.accumulate(a.shape[1] for a in arrays))[:-1]
  dtypes = [a.dtype for a in arrays]
  split = lambda rows: [part.astype(d) for part, d in zip(jnp.split(rows, ends, axis=-1), dtypes)]
  return dtype, split


def plan_rows(requests: jnp.ndarray, n_rows: int, axis_name: str,
              capacity: Optional[int] = None):
  """The exchange that serves `requests` (int32 `[M]` global row ids) from devices holding
  `n_rows` rows each: an opaque value for `gather_rows` and `add_rows` (in shard_map)."""
  capacity = _capacity(capacity, requests, axis_name)
  return _plan(requests.astype(jnp.int32), n_rows, axis_name, capacity) + (capacity,)


def gather_rows(sources: Sequence[jnp.ndarray], plan, axis_name: str) -> List[jnp.ndarray]:
  """`[s[requests] for s in sources]` of `plan_rows`' requests, sources `[n_rows, F_i]`
  of every device (one exchange per pass for all of them)."""
  send_rows, _, slot, rank, n_passes, capacity = plan
  n_devices = send_rows.shape[0]
  dtype, split = _joined(sources)

  def one_pass(k, out):
    rows = jax.lax.dynamic_slice_in_dim(send_rows, k * capacity, capacity, axis=1)
    send = jnp.concatenate([jnp.take(s, rows, axis=0).astype(dtype) for s in sources], -1)
    recv = _exchange(send, axis_name).reshape(n_devices * capacity, -1)
    return jnp.where((rank // capacity == k)[:, None], jnp.take(recv, slot, axis=0), out)

  out = _varying(jnp.zeros((slot.shape[0], sum(s.shape[1] for s in sources)), dtype),
                 axis_name)
  return split(jax.lax.fori_loop(0, n_passes, one_pass, out))


def add_rows(values: Sequence[jnp.ndarray], plan, into: Sequence[jnp.ndarray],
             axis_name: str) -> List[jnp.ndarray]:
  """The inverse exchange: each `values[i]` `[M, F_i]` (one row per request of
  `plan_rows`) summed into its source row of `into[i]` `[n_rows, F_i]` (in place, in
  `into`'s dtypes)."""
  send_rows, _, slot, rank, n_passes, capacity = plan
  n_devices = send_rows.shape[0]
  dtype, split = _joined(values)
  joined = jnp.concatenate([v.astype(dtype) for v in values], axis=-1)

  def one_pass(k, accs):
    at = jnp.where(rank // capacity == k, slot, n_devices * capacity)
    send = jnp.zeros((n_devices * capacity, joined.shape[1]), dtype).at[at].set(
        joined, mode="drop")
    recv = _exchange(send.reshape(n_devices, capacity, -1), axis_name)
    rows = jax.lax.dynamic_slice_in_dim(send_rows, k * capacity, capacity, axis=1).reshape(-1)
    return [acc.at[rows].add(part.astype(acc.dtype))
            for acc, part in zip(accs, split(recv.reshape(n_devices * capacity, -1)))]

  return jax.lax.fori_loop(0, n_passes, one_pass, list(into))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def fetch(x: jnp.ndarray, requests: jnp.ndarray, axis_name: str,
          capacity: Optional[int] = None) -> jnp.ndarray:
  """`out[j] = rows[requests[j]]` of the rows of all devices of `axis_name` (in shard_map).

  Args:
    x: this device's rows `[n_rows, ...]`; global id of row i: `axis_index * n_rows + i`.
    requests: int32 `[M]` global row ids this device wants (any, repeats allowed).
    axis_name: the mesh axis the rows are sharded over.
    capacity: rows per device pair and pass (static); None: `default_capacity(M, D)`.

  Returns:
    `[M, ...]` in `x.dtype`. The gradient with respect to `x` sums each request's
    cotangent into its row on its owner (an exchange in the opposite direction).
  """
  return _fetch_fwd(x, requests, axis_name, capacity)[0]


def _capacity(capacity, requests, axis_name):
  if capacity is None:
    return default_capacity(requests.shape[0], jax.lax.axis_size(axis_name))
  if capacity < 1:
    raise ValueError(f"fetch capacity must be >= 1 rows per device pair, got {capacity}")
  return capacity


def _fetch_fwd(x, requests, axis_name, capacity):
  plan = plan_rows(requests, x.shape[0], axis_name, capacity)
  rows = x.reshape(x.shape[0], -1)
  out = gather_rows([rows], plan, axis_name)[0].reshape(requests.shape + x.shape[1:])
  return out, (plan[:-1], x.shape[0], requests)


def _fetch_bwd(axis_name, capacity, residuals, g):
  plan, n_rows, requests = residuals
  plan = plan + (_capacity(capacity, requests, axis_name),)
  acc = jnp.promote_types(g.dtype, jnp.float32)
  zeros = _varying(jnp.zeros((n_rows, math.prod(g.shape[1:])), acc), axis_name)
  dx = add_rows([g.reshape(g.shape[0], -1)], plan, [zeros], axis_name)[0]
  return dx.reshape((n_rows,) + g.shape[1:]).astype(g.dtype), None


fetch.defvjp(_fetch_fwd, _fetch_bwd)


def _shift(piece, step, axis_name, wrap):
  """Device i receives `piece` of device i - step (zeros where none, without `wrap`)."""
  n_devices = jax.lax.axis_size(axis_name)
  pairs = [(i, (i + step) % n_devices) for i in range(n_devices)
           if wrap or 0 <= i + step < n_devices]
  return jax.lax.ppermute(piece, axis_name, pairs)


def halo(x: jnp.ndarray, n_before: int, n_after: int, axis_name: str, axis: int = 0,
         wrap: bool = False) -> Tuple[Optional[jnp.ndarray], Optional[jnp.ndarray]]:
  """`(before, after)`: the last `n_before` entries (along `axis`) of the previous device of
  `axis_name` and the first `n_after` of the next (None when 0). Without `wrap` the first
  device's `before` and the last one's `after` are zeros; with it they come from the
  other end. Differentiable (`ppermute`'s transpose is the reverse `ppermute`)."""
  size = x.shape[axis]
  if max(n_before, n_after) > size:
    raise ValueError(f"a halo of {max(n_before, n_after)} entries needs at least that many "
                     f"per device, got {size}: use fewer devices on '{axis_name}' or longer "
                     f"sequences")
  before = after = None
  if n_before:
    before = _shift(jax.lax.slice_in_dim(x, size - n_before, size, axis=axis), 1, axis_name,
                    wrap)
  if n_after:
    after = _shift(jax.lax.slice_in_dim(x, 0, n_after, axis=axis), -1, axis_name, wrap)
  return before, after


class ExchangedRows:
  """Rows of per-position arrays `[batch, n_local, F]` of a sequence sharded in slices of
  `n_local` positions over `axis_name`, read and added to by (batch, global position)
  through `gather_rows` / `add_rows`: the rows protocol of `windowed.RowsHere`, for
  `windowed.windowed_steps` over the positions of any devices (in shard_map)."""

  def __init__(self, batch: int, n_local: int, axis_name: str,
               capacity: Optional[int] = None):
    self.batch, self.n_local, self.axis_name, self.capacity = batch, n_local, axis_name, capacity

  def keys(self, positions):
    """Rows `b * L + position` `[b, ...]` keying dropout (L the whole length)."""
    length = self.n_local * jax.lax.axis_size(self.axis_name)
    return _batch_index(positions) * length + positions

  def prepare(self, sources):
    return [s.reshape(-1, s.shape[-1]) for s in sources]

  def locate(self, positions):
    owner, local = positions // self.n_local, positions % self.n_local
    ids = (owner * self.batch + _batch_index(positions)) * self.n_local + local
    return plan_rows(ids.reshape(-1), self.batch * self.n_local, self.axis_name,
                     self.capacity)

  def read(self, where, prepared, dtypes):
    del dtypes
    return gather_rows(prepared, where, self.axis_name)

  def start(self, into):
    return self.prepare(into)

  def add(self, state, where, values):
    return add_rows(values, where, state, self.axis_name)

  def finish(self, state, into):
    return [s.reshape(t.shape) for s, t in zip(state, into)]


class HaloRows:
  """Rows of this device's slice `[batch, n, F]` of a sequence sharded over `axis_name`
  and of its neighbours' edges (`halo`), by position `e` in the extended slice: `e <
  n_before`: the previous device's last rows, then this device's `n`, then the next
  device's first `n_after` (around the ends with `wrap`, else zeros). The rows protocol
  of `windowed.RowsHere`; gradients added to the neighbours' rows go back to them
  (`ppermute`) in `finish`."""

  def __init__(self, batch: int, n: int, n_before: int, n_after: int, axis_name: str,
               wrap: bool):
    self.batch, self.n, self.n_before, self.n_after = batch, n, n_before, n_after
    self.axis_name, self.wrap = axis_name, wrap

  def keys(self, positions):
    """Rows `b * L + global position` keying dropout (L the whole length)."""
    n_devices = jax.lax.axis_size(self.axis_name)
    start = jax.lax.axis_index(self.axis_name) * self.n - self.n_before
    return _batch_index(positions) * (self.n * n_devices) + start + positions

  def _parts(self):
    return ((0, self.n_before), (self.n_before, self.n),
            (self.n_before + self.n, self.n_after))

  def prepare(self, sources):
    out = []
    for s in sources:
      before, after = halo(s, self.n_before, self.n_after, self.axis_name, axis=1,
                           wrap=self.wrap)
      out.append([None if t is None else t.reshape(-1, t.shape[-1])
                  for t in (before, s, after)])
    return out

  def locate(self, positions):
    """For each part (before, own, after): flat row ids, out of range where not in it."""
    b = _batch_index(positions)
    where = []
    for start, size in self._parts():
      inside = (positions >= start) & (positions < start + size)
      where.append(jnp.where(inside, b * size + positions - start,
                             self.batch * size).reshape(-1))
    return where

  def read(self, where, prepared, dtypes):
    out = []
    for parts, dtype in zip(prepared, dtypes):
      rows = jnp.zeros((where[0].shape[0], parts[1].shape[1]), dtype)
      for ids, part in zip(where, parts):
        if part is not None:
          got = jnp.take(part, ids, axis=0, mode="fill", fill_value=0)
          rows = rows + got.astype(dtype)
      out.append(rows)
    return out

  def start(self, into):
    return [[None if not size else jnp.zeros((self.batch * size, t.shape[-1]), t.dtype)
             for _, size in self._parts()[::2]] + [t.reshape(-1, t.shape[-1])]
            for t in into]

  def add(self, state, where, values):
    out = []
    for (before, after, own), v in zip(state, values):
      accs = [before, own, after]
      accs = [None if acc is None else acc.at[ids].add(v.astype(acc.dtype), mode="drop")
              for acc, ids in zip(accs, where)]
      out.append([accs[0], accs[2], accs[1]])
    return out

  def finish(self, state, into):
    out = []
    for (before, after, own), t in zip(state, into):
      own = own.reshape(t.shape)
      if before is not None:  # the previous device's last rows
        back = _shift(before.reshape(self.batch, self.n_before, -1), -1, self.axis_name,
                      self.wrap)
        own = own.at[:, self.n - self.n_before:].add(back)
      if after is not None:  # the next device's first rows
        back = _shift(after.reshape(self.batch, self.n_after, -1), 1, self.axis_name,
                      self.wrap)
        own = own.at[:, :self.n_after].add(back)
      out.append(own)
    return out


def _batch_index(positions):
  """`b` broadcast to `positions` `[batch, ...]`."""
  return jax.lax.broadcasted_iota(jnp.int32, positions.shape, 0)
