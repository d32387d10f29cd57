"""Attention over chunk windows of an ordered sequence, computed a group of chunks per step.

Both chunked attentions reduce to this. The entries of a sequence (the positions, for
local attention; the hash-sorted (round, position) entries, for LSH attention) are cut
into chunks of `chunk_len`, and each chunk's queries attend to the keys of the chunk and
of its `n_before` / `n_after` neighbours. `windowed_attention` computes this
`group_chunks` chunks per loop step: a step gathers the rows of its window from the
per-position input `x` by `order`, and `attend_fn` projects them and attends. The backward
pass repeats each step under `jax.vjp` and scatter-adds the rows' gradients into `dx`.
Neither pass holds sorted copies, projections, logits or masks of the whole sequence:
beyond `x`, its gradient, the output and the int32 order, memory is that of one step,
O(group_chunks * chunk_len * window).
"""
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from reformer_jax.layers import xla_cpu
from reformer_jax.layers.chunking import from_bits, to_bits, zeros_after
from reformer_jax.layers.dense import output_contributions, position_rows


# attend_fn(params, rows [b, h, W*c, F], info [b, h, W*c, ...], offsets int32 [W*c],
#           rng or None) -> outputs, each [b, heads, G*c, ...]
AttendFn = Callable[..., Any]


# Default size of a step: at most this many entries, and at most STEP_ELEMENTS gathered
# input elements (batch * heads * entries * features: 32 MiB in float32), so wide or
# batched models take smaller steps.
STEP_ENTRIES = 4096
STEP_ELEMENTS = 1 << 23


def default_chunks_per_step(batch: int, heads: int, features: int, chunk_len: int) -> int:
  """Chunks per step within STEP_ENTRIES entries and STEP_ELEMENTS gathered elements."""
  entries = min(STEP_ENTRIES, STEP_ELEMENTS // max(1, batch * heads * features))
  return max(1, entries // chunk_len)


def group_size(n_chunks: int, group_chunks: int) -> int:
  """The largest divisor of `n_chunks` that is at most `group_chunks` (>= 1)."""
  group = max(1, min(group_chunks, n_chunks))
  while n_chunks % group:
    group -= 1
  return group


def window_keys(chunks: jnp.ndarray, n_before: int, n_after: int) -> jnp.ndarray:
  """Key windows of the query chunks of a step's window.

  Args:
    chunks: `[b, h, W, chunk_len, ...]` with `W = n_before + G + n_after`: the step's
      window of chunks, its G query chunks in the middle.
    n_before, n_after: neighbour chunks looked at.

  Returns:
    `[b, h, G, (n_before + 1 + n_after) * chunk_len, ...]`: for each query chunk, its
    `n_before` predecessors (oldest first), itself and its `n_after` successors.
  """
  n_query = chunks.shape[2] - n_before - n_after
  pieces = [chunks[:, :, n_before + s:n_before + s + n_query]
            for s in range(-n_before, n_after + 1)]
  return jnp.concatenate(pieces, axis=3)


def query_chunks(chunks: jnp.ndarray, n_before: int, n_after: int) -> jnp.ndarray:
  """The middle G query chunks `[b, h, G, chunk_len, ...]` of a step's window of chunks."""
  return chunks[:, :, n_before:chunks.shape[2] - n_after]


class _Plan:
  """Index arithmetic of the steps: which entries and rows step g reads."""

  def __init__(self, x, order, chunk_len, n_before, n_after, group_chunks, first=0,
               n_queries=None):
    self.batch, self.heads, self.n = order.shape
    self.first, self.n = first, n_queries or self.n
    if self.n % chunk_len:
      raise ValueError(f"{self.n} ordered entries are not a multiple of chunk_len "
                       f"{chunk_len}; pad first")
    self.x_heads, self.length, self.features = x.shape[1:]
    if x.shape[0] != self.batch or self.x_heads not in (1, self.heads):
      raise ValueError(f"x must be [batch, 1 or n_heads, length, features] with batch "
                       f"{self.batch} and n_heads {self.heads}; got {x.shape}")
    self.chunk_len = chunk_len
    self.group = group_size(self.n // chunk_len, group_chunks)
    self.n_steps = self.n // (chunk_len * self.group)
    self.query_len = self.group * chunk_len
    self.window_len = (n_before + self.group + n_after) * chunk_len
    self.before_len = n_before * chunk_len
    b = jnp.arange(self.batch, dtype=jnp.int32)[:, None, None]
    h = jnp.arange(self.heads, dtype=jnp.int32)[None, :, None] if self.x_heads > 1 else 0
    self.row_base = (b * self.x_heads + h) * self.length  # [b, h or 1, 1]

  def offsets(self, step):
    """Unwrapped ordered offsets `[W*c]` of step `step`'s window (may be < 0 or >= n)."""
    start = self.first + step * self.query_len - self.before_len
    return start + jnp.arange(self.window_len, dtype=jnp.int32)

  def entries(self, order, info, step):
    """(`order`'s entries `[b, h, W*c]`, info windows, offsets) of step `step`."""
    offsets = self.offsets(step)
    take = lambda t: jnp.take(t, offsets, axis=2, mode="wrap")
    return take(order), jax.tree.map(take, info), offsets

  def window(self, order, info, step):
    """(flat row ids `[b, h, W*c]`, info windows, offsets) of step `step`."""
    entries, info, offsets = self.entries(order, info, step)
    return self.row_base + entries, info, offsets


def _flat(x):
  return jnp.reshape(x, (-1, x.shape[-1]))


# Rows are gathered and scatter-added per batch element (`jax.vmap` over the batch: the
# batch is a gather / scatter batching dimension), not from one flat [batch * rows, F]
# array: a mesh that splits the batch (`sharding.BATCH_AXES`) then keeps it split, where a
# flat gather makes the partitioner assemble the whole batch on every device.


def _per_batch(x):
  """`[b, ..., F]` -> `[b, rows, F]`."""
  return jnp.reshape(x, (x.shape[0], -1, x.shape[-1]))


def _gather_rows(x_bits, rows, dtype):
  """Rows `[b, ..., F]` of the input `[b, R, F]` (16-bit floats as bits, see `to_bits`) as
  `dtype`; `rows` `[b, ...]` are global row ids (`_Plan.row_base`), taken modulo R."""
  per_row = x_bits.shape[1]
  take = lambda x, r: jnp.take(x, r % per_row, axis=0, mode="clip")
  return from_bits(jax.vmap(take)(x_bits, rows), dtype)


def _add_rows(dx, rows, values):
  """`dx` `[b, R, F]` plus `values` `[b, ..., F]` at the global row ids `rows` `[b, ...]`."""
  per_row = dx.shape[1]
  add = lambda d, r, v: d.at[r.reshape(-1) % per_row].add(
      v.reshape(-1, v.shape[-1]).astype(d.dtype), mode="promise_in_bounds")
  return jax.vmap(add)(dx, rows, values)


def _forward(attend_fn, x, params, order, info, rng, plan: _Plan):
  x_bits = to_bits(_per_batch(x))

  def step_out(step):
    rows, info_w, offsets = plan.window(order, info, step)
    step_rng = None if rng is None else jax.random.fold_in(rng, step)
    return attend_fn(params, _gather_rows(x_bits, rows, x.dtype), info_w, offsets, step_rng)

  if plan.n_steps == 1:
    return step_out(jnp.int32(0))
  full = lambda s: zeros_after(s.shape[:2] + (plan.n,) + s.shape[3:], s.dtype, x)

  def body(step, outs):
    start = step * plan.query_len
    return jax.tree.map(lambda o, y: jax.lax.dynamic_update_slice_in_dim(o, y, start, axis=2),
                        outs, step_out(step))

  outs = jax.tree.map(full, jax.eval_shape(step_out, jnp.int32(0)))
  return jax.lax.fori_loop(0, plan.n_steps, body, outs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 6, 7, 8, 9))
def windowed_attention(attend_fn: AttendFn, x: jnp.ndarray, params: Any, order: jnp.ndarray,
                       info: Any, rng: Any, chunk_len: int, n_before: int, n_after: int,
                       group_chunks: int) -> Any:
  """Chunk-window attention over `order`, `group_chunks` chunks per step (see module doc).

  Args:
    attend_fn: pure `attend_fn(params, rows, info, offsets, rng) -> (out, lse)` for one
      step: `rows` `[b, h, W*c, F]` are the window's rows of `x` (W = n_before +
      G + n_after chunks; the G query chunks in the middle), `info` the window of
      `info`, `offsets` int32 `[W*c]` the entries' unwrapped offsets in the order (< 0 or
      >= n beyond the ends: the window wraps around), `rng` this step's key. Returns a
      pytree of outputs for the query entries, each `[b, heads, G*c, ...]` (e.g. the
      attention output and its logsumexp). It must not close over traced values: pass
      them in `params` or `info`.
    x: per-position rows `[batch, 1 or n_heads, length, F]` (1: shared by the heads).
    params: pytree of arrays `attend_fn` differentiates through (or None).
    order: int32 `[batch, n_heads or 1, n]`, `n` a multiple of `chunk_len`: the row of
      `x` (position) of each ordered entry, per head (1: the same order for all heads).
    info: pytree of non-differentiated per-entry arrays `[batch, n_heads or 1, n, ...]`.
    rng: PRNG key folded with the step index for `attend_fn`, or None.
    chunk_len, n_before, n_after: the chunk windows.
    group_chunks: chunks per step (the largest divisor of n / chunk_len at most this).

  Returns:
    `attend_fn`'s outputs for all entries, each `[batch, heads, n, ...]`, in entry order.
  """
  plan = _Plan(x, order, chunk_len, n_before, n_after, group_chunks)
  return _forward(attend_fn, x, params, order, info, rng, plan)


def _windowed_fwd(attend_fn, x, params, order, info, rng, chunk_len, n_before, n_after,
                  group_chunks):
  plan = _Plan(x, order, chunk_len, n_before, n_after, group_chunks)
  out = _forward(attend_fn, x, params, order, info, rng, plan)
  return out, (x, params, order, info, rng)


def _windowed_bwd(attend_fn, chunk_len, n_before, n_after, group_chunks, residuals,
                  cotangents):
  x, params, order, info, rng = residuals
  plan = _Plan(x, order, chunk_len, n_before, n_after, group_chunks)
  x_bits = to_bits(_per_batch(x))
  ct_dtypes = jax.tree.map(lambda c: c.dtype, cotangents)
  ct_bits = jax.tree.map(to_bits, cotangents)

  def body(step, carry):
    dx, dparams = carry
    rows, info_w, offsets = plan.window(order, info, step)
    step_rng = None if rng is None else jax.random.fold_in(rng, step)
    fn = lambda p, r: attend_fn(p, r, info_w, offsets, step_rng)
    _, vjp = jax.vjp(fn, params, _gather_rows(x_bits, rows, x.dtype))
    start = step * plan.query_len
    cut = lambda t, d: from_bits(jax.lax.dynamic_slice_in_dim(t, start, plan.query_len, axis=2),
                                 d)
    d_params, d_rows = vjp(jax.tree.map(cut, ct_bits, ct_dtypes))
    dx = _add_rows(dx, rows, d_rows)
    return dx, jax.tree.map(jnp.add, dparams, d_params)

  # Accumulated in float32 (XLA:CPU would upcast a bfloat16 scatter-add through copies).
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
  zeros = (zeros_after(x_bits.shape, acc_dtype, jax.tree.leaves(cotangents)[0], x),
           jax.tree.map(jnp.zeros_like, params))
  dx, dparams = jax.lax.fori_loop(0, plan.n_steps, body, zeros)
  return dx.reshape(x.shape).astype(x.dtype), dparams, None, None, None


windowed_attention.defvjp(_windowed_fwd, _windowed_bwd)


# block_fn(params, rows [b, h, W*c, F], info, offsets int32 [W*c], rng, step,
#          query_keys int32 [b, h, G*c]) -> contributions [b, h, G*c, d]
BlockStepFn = Callable[..., jnp.ndarray]


class RowsHere:
  """Rows of per-position arrays `[batch, length, F]` held on this device, read and added
  to by (batch, position) (the `rows` of `windowed_steps`).

  The protocol: `prepare(sources)` once before the loop; per step `locate(positions
  [b, h, m])` -> where, `read(where, prepared) -> [M, F_i]` (M = b h m),
  `keys(positions)` (int32 rows keying dropout) and `add(state, where, values [M, F_i])`
  into the state that `start(into)` makes and `finish(state)` turns back into arrays.
  """

  def __init__(self, batch: int, length: int):
    self.batch, self.length = batch, length

  def keys(self, positions):
    return position_rows(self.batch, self.length, positions)

  def prepare(self, sources):
    return [to_bits(s) for s in sources]

  def locate(self, positions):
    return positions.reshape(self.batch, -1)

  def read(self, where, prepared, dtypes):
    return [_gather_rows(s, where, d).reshape(-1, s.shape[-1])
            for s, d in zip(prepared, dtypes)]

  def start(self, into):
    return list(into)

  def add(self, state, where, values):
    return [_add_rows(acc, where, v.reshape(self.batch, -1, v.shape[-1]))
            for acc, v in zip(state, values)]

  def finish(self, state, into):
    return [s.reshape(t.shape) for s, t in zip(state, into)]


def windowed_steps(block_fn: BlockStepFn, x: jnp.ndarray, params: Any, order: jnp.ndarray,
                   info: Any, rng: Any, rows: Any, plan: "_Plan", y: Optional[jnp.ndarray],
                   dx: Optional[jnp.ndarray] = None, dy: Optional[jnp.ndarray] = None):
  """A block made of windowed steps, summed into its rows, one loop over the steps.

  The block is `F(x)[row] = sum of block_fn's contributions whose query entry is at row`:
  each step's query entries (the middle G chunks of its window, as in
  `windowed_attention`) contribute a `[d]` vector to their own position, e.g. a head's
  attention output through its slice of the output projection.

  Args:
    block_fn: pure per-step function (see `BlockStepFn`); may close over traced values.
    x: `[batch, length, F]` rows, read by `rows` at the window's positions.
    params: pytree of arrays differentiated through.
    order, info: as in `windowed_attention`; `order` holds positions that `rows` locates.
    rng: passed to `block_fn` as it is (with the step index).
    rows: where the positions' rows are (`RowsHere`, or rows on other devices).
    plan: the steps (`_Plan`).
    y: `[batch, length, d]`: without `dy`, returns `y + F(x)`; with `dy`, `y - F(x)` (or
      None: not rebuilt).
    dx: `[batch, length, F]`, the gradient to add to (with `dy`).
    dy: `[batch, length, d]`, the cotangent of F's output, or None (forward only).

  Returns:
    `y + F(x)` without `dy`; else `(y - F(x) or None, dx + dF/dx^T dy, dF/dparams^T dy)`.
  """
  sources = (x,) if dy is None else (x, dy)
  dtypes = [s.dtype for s in sources]
  prepared = rows.prepare(sources)
  into = [t for t in (y, dx) if t is not None]
  after_len = plan.window_len - plan.before_len - plan.query_len
  pad = lambda t: jnp.pad(t, [(0, 0), (0, 0), (plan.before_len, after_len), (0, 0)])

  def body(step, carry):
    state, dparams = carry
    entries, info_w, offsets = plan.entries(order, info, step)
    where = rows.locate(entries)
    got = rows.read(where, prepared, dtypes)
    query_keys = rows.keys(entries[:, :, plan.before_len:plan.before_len + plan.query_len])
    fn = lambda p, r: block_fn(p, r, info_w, offsets, rng, step, query_keys)
    window_rows = got[0].reshape(entries.shape + x.shape[-1:])
    if dy is None:
      out = fn(params, window_rows)
      return rows.add(state, where, [_flat(pad(out))]), dparams
    out, vjp = jax.vjp(fn, params, window_rows)
    queries = slice(plan.before_len, plan.before_len + plan.query_len)
    d_out = got[1].reshape(entries.shape + dy.shape[-1:])[:, :, queries]
    d_params, d_rows = vjp(d_out.reshape(out.shape).astype(out.dtype))
    values = [_flat(d_rows)]
    if y is not None:
      values.insert(0, -_flat(pad(out)))
    return rows.add(state, where, values), jax.tree.map(jnp.add, dparams, d_params)

  zeros = jax.tree.map(jnp.zeros_like, params)
  state, dparams = jax.lax.fori_loop(0, plan.n_steps, body, (rows.start(into), zeros))
  done = rows.finish(state, into)
  if dy is None:
    return done[0]
  return (done[0] if y is not None else None), done[-1], dparams


def windowed_rebuild_vjp(block_fn: BlockStepFn, x: jnp.ndarray, params: Any,
                         order: jnp.ndarray, info: Any, rng: Any, y: jnp.ndarray,
                         dx: jnp.ndarray, dy: jnp.ndarray, chunk_len: int, n_before: int,
                         n_after: int, group_chunks: int, rows: Any = None, first: int = 0,
                         n_queries: Optional[int] = None):
  """Rebuild and VJP of a block made of windowed steps (`windowed_steps`) in one loop.

  For a reversible layer `y = x_other + F(x)` this returns `(y - F(x), dx + dF^T dy,
  dparams)` with one forward and one backward pass per step, where rebuilding `y - F(x)`
  and then differentiating F would run the steps' forward twice.

  Args:
    block_fn: as in `windowed_steps`.
    x: rows `[batch, length, F]`, shared by the heads.
    params: pytree of arrays differentiated through.
    order, info, rng, chunk_len, n_before, n_after, group_chunks: as in
      `windowed_attention`; on one device `order` `[batch, h, length]` must hold every
      position once per head (a permutation, e.g. one hashing round).
    y: `[batch, length, d]`, the stream to rebuild.
    dx: `[batch, length, F]`, the gradient to add to (both added to in place, in their
      dtypes: for 16-bit streams, one rounding per addition to a row).
    dy: `[batch, length, d]`, the cotangent of F's output.
    rows: where the rows of the positions in `order` are (None: `RowsHere`).
    first, n_queries: the query entries are `order[:, :, first:first + n_queries]`
      (None: all), the others only keys of the windows (halos).

  Returns:
    `(y - F(x), dx + dF/dx^T dy, dF/dparams^T dy)`.
  """
  plan = _Plan(x[:, None], order, chunk_len, n_before, n_after, group_chunks, first, n_queries)
  if rows is None:
    if plan.n != plan.length:
      raise ValueError(f"windowed_rebuild_vjp needs one entry per position; got x {x.shape} "
                       f"and order {order.shape}")
    rows = RowsHere(x.shape[0], x.shape[1])
  return windowed_steps(block_fn, x, params, order, info, rng, rows, plan, y, dx, dy)


def attention_block(module: Any, attend_fn: AttendFn, n_rows: int) -> BlockStepFn:
  """The `BlockStepFn` of a chunked attention module: `attend_fn`'s head outputs (first of
  a tuple) through the module's output projection and dropout, params `(attend_fn's params,
  out kernel [h, d_head, d_model])`, rng `(attention dropout key, output dropout key)`:
  the first folded with the step index."""
  def block_fn(p, rows, info_w, offsets, rngs, step, query_keys):
    attn_rng, out_rng = rngs
    step_rng = None if attn_rng is None else jax.random.fold_in(attn_rng, step)
    out = attend_fn(p[0], rows, info_w, offsets, step_rng)
    out = out[0] if isinstance(out, tuple) else out
    return output_contributions(out, p[1], module.output_dropout, out_rng, query_keys, n_rows,
                                module.dtype)
  return block_fn


def module_grads(module: Any, d_params: Any, d_kernel: jnp.ndarray):
  """`(the module's parameter gradients, (d scale, d bias))` of `attention_block`'s params
  gradients."""
  tree = module.variables["params"]
  grads = {name: {"kernel": (d_kernel if name == "out" else d_params[name]).reshape(
      tree[name]["kernel"].shape)} for name in tree}
  return grads, d_params["norm"]


def rebuild_attention(module: Any, attend_fn: AttendFn, x: jnp.ndarray, params: Any,
                      out_kernel: jnp.ndarray, order: jnp.ndarray, info: Any, attn_rng: Any,
                      out_rng: Any, rebuild, group_chunks: int):
  """`windowed_rebuild_vjp` of a chunked attention module's windowed attention followed by
  its `output_projection`.

  Args:
    module: the bound attention module (its `chunk_len`, `n_chunks_before`,
      `n_chunks_after`, `output_dropout`, `dtype` and parameters `{name: {'kernel'}}`).
    attend_fn, x, params, order, info, attn_rng, group_chunks: of its `windowed_attention`
      (`x` `[b, 1, L, F]`; `params` `{'norm': (scale, bias) or None, name: kernel}`;
      `attend_fn` returns the head outputs `[b, h, G*c, d_head]` or a tuple starting with
      them).
    out_kernel: `[h, d_head, d_model]`; out_rng: the output dropout's key.
    rebuild: `(y, dx, dy)`, see `windowed_rebuild_vjp`.

  Returns:
    `(y - F(x), dx + dF/dx^T dy, the module's parameter gradients, (d scale, d bias))`.
  """
  y, dx, dy = rebuild
  block_fn = attention_block(module, attend_fn, y.shape[0] * y.shape[1])
  y, dx, (d_params, d_kernel) = windowed_rebuild_vjp(
      block_fn, x[:, 0], (params, out_kernel), order, info, (attn_rng, out_rng), y, dx, dy,
      module.chunk_len, module.n_chunks_before, module.n_chunks_after, group_chunks)
  return (y, dx) + module_grads(module, d_params, d_kernel)


def sliced_block(module: Any, attend_fn: AttendFn, x: jnp.ndarray, params: Any,
                 order: jnp.ndarray, info: Any, rngs: Any, rows: Any, group_chunks: int,
                 n_rows: int, rebuild=None, *, first: int, n_queries: int):
  """A chunked attention module's block (`attention_block`) on one device's slice of a
  sequence sharded over devices: the steps read their window's rows through `rows`
  (`exchange.ExchangedRows`, `exchange.HaloRows`) and add their outputs' projections
  into the rows of their query entries, wherever those are; one loop in each pass.

  Args:
    module, attend_fn: as in `rebuild_attention` (`attend_fn` projects the rows itself).
    x: this slice's input rows `[b, n, d_model]`.
    params: `(attend_fn's params, out kernel [h, d_head, d_model])`.
    order, info: the window `windowed_attention` steps over, `order` positions that
      `rows` locates; the query entries are `[first, first + n_queries)` of it.
    rngs: `(attention dropout key, output dropout key)`, each None when unused.
    rows: the rows protocol (`RowsHere`).
    group_chunks: chunks per step.
    n_rows: the bound of `rows.keys` (batch times the whole length).
    rebuild: `(y, dx, dy)` of a reversible layer's backward (`can_rebuild`), or None.

  Returns:
    `[b, n, d_model]` in `module.dtype` (differentiable: the backward pass runs the steps
    again); with `rebuild`, `(y - out, dx + dout/dx^T dy, the module's parameter
    gradients, (d scale, d bias))`.
  """
  block_fn = attention_block(module, attend_fn, n_rows)
  steps = (module.chunk_len, module.n_chunks_before, module.n_chunks_after, group_chunks)
  if rebuild is None:
    return _streamed(block_fn, steps + (first, n_queries), rows, x, params, order, info,
                     rngs).astype(module.dtype)
  y, dx, (d_params, d_kernel) = windowed_rebuild_vjp(
      block_fn, x, params, order, info, rngs, *rebuild, *steps, rows=rows, first=first,
      n_queries=n_queries)
  return (y, dx) + module_grads(module, d_params, d_kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _streamed(block_fn, steps, rows, x, params, order, info, rngs):
  """`F(x)` `[b, n, F]` float32 of `windowed_steps` (see `sliced_block`)."""
  plan = _Plan(x[:, None], order, *steps)
  return windowed_steps(block_fn, x, params, order, info, rngs, rows, plan,
                        zeros_after(x.shape, jnp.float32, x))


def _streamed_fwd(block_fn, steps, rows, x, params, order, info, rngs):
  out = _streamed(block_fn, steps, rows, x, params, order, info, rngs)
  return out, (x, params, order, info, rngs)


def _streamed_bwd(block_fn, steps, rows, residuals, g):
  x, params, order, info, rngs = residuals
  plan = _Plan(x[:, None], order, *steps)
  dx = zeros_after(x.shape, jnp.float32, g, x)
  _, dx, d_params = windowed_steps(block_fn, x, params, order, info, rngs, rows, plan, None,
                                   dx, g)
  return dx.astype(x.dtype), d_params, None, None, None


_streamed.defvjp(_streamed_fwd, _streamed_bwd)


def can_rebuild(rebuild, length: int, chunk_len: int, sliced: bool = False) -> bool:
  """Whether `rebuild_attention` applies: `length` a multiple of `chunk_len` (no padding)
  and longer than one chunk (`sliced`: a slice of a sequence sharded over devices,
  `sliced_block`, whose length is checked there), and streams `y`, `dx` of one float
  dtype: float32, or 16-bit except on XLA:CPU (`xla_cpu` 'float32_accumulation')."""
  y, dx, _ = rebuild
  return ((sliced or (length % chunk_len == 0 and length > chunk_len))
          and y.dtype == dx.dtype and jnp.issubdtype(y.dtype, jnp.floating)
          and (y.dtype.itemsize >= 4 or not xla_cpu.kept("float32_accumulation")))
