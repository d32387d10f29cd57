"""Reversible residual layers (RevNet; Gomez et al. 2017) as used by the Reformer.

Each layer maps two streams `(x1, x2)` to

  y1 = x1 + F(x2)
  y2 = x2 + G(y1)

and is inverted exactly by `x2 = y2 - G(y1)`, `x1 = y1 - F(x2)`. The backward pass of
`reversible_layers` rebuilds every layer's inputs from its outputs instead of storing them,
so the activation memory of a stack does not grow with its depth: only the final outputs
(plus parameters, rng keys and `aux`) are kept for the backward pass, and one layer's
intermediates exist at a time.

Randomness is replayed: F and G receive the same rng keys in the backward recomputation as
in the forward pass, so dropout masks and LSH random rotations are identical. A block may
also keep a small state from its forward pass for its backward (`saves_state`: LSH
attention keeps its buckets, so the backward attends within the forward's buckets even
where the rebuilt input differs from the forward's by rounding, and skips the hashing).

Layers are unrolled by default. With `scan=True`, layers that repeat with a period (e.g.
attention types cycling local, lsh, local, lsh ...) run as a `lax.scan` over the cycles,
forward and backward: the compiled program holds one cycle, so compile time does not grow
with depth. The price is memory: each step stacks the per-layer parameters for the scan and
slices the stacked gradients (about two parameter-sized temporaries per layer), and XLA
packs the buffers of the nested loops less tightly (crime-and-punishment model, 6 layers,
524,288 tokens: 3.57 GiB scanned vs 3.08 GiB unrolled).
"""
import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax.layers import logical_axes, xla_cpu
from reformer_jax.layers.chunking import from_bits, to_bits

# F(params, x, aux, rng) -> y with y.shape == x.shape.
BlockFn = Callable[[Any, jnp.ndarray, Any, Any], jnp.ndarray]


# XLA schedules by data dependencies only, and `optimization_barrier` does not constrain it
# on CPU (barriers are removed before CSE and scheduling). Values computed from parameters
# or rng keys alone (dropout masks, LSH rotations, broadcast LayerNorm scales, ...) would be
# computed for all unrolled layers up front and merged (CSE) between the forward pass and
# the backward recomputation, keeping an activation-sized array per layer alive. In the
# backward pass it could also rebuild every layer's input first and defer the parameter
# gradients (needed only at the end), keeping every block's intermediates alive. `_tie`
# makes each block's parameters and keys depend on its input (and, backward, on the
# gradients of the block before; see `_block_backward`), without changing any value.


def _tie(tree, refs):
  """`tree` (arrays and PRNG keys) unchanged in value, but computed after `refs`.

  `refs` is a pytree of float arrays (None allowed). Uses `isnan(ref[0])` of each, False
  unless a ref is already NaN (and with it the result): keys are XORed with the flag and
  float arrays replaced by NaN where it holds.
  """
  if not xla_cpu.kept("ties"):
    return tree
  flag = jnp.zeros((), bool)
  for ref in jax.tree_util.tree_leaves(refs):
    first = ref.reshape(-1)[0]
    flag = flag | (first != first)

  def tie(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = jax.random.key_data(x) ^ flag.astype(jnp.uint32)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    if jnp.issubdtype(x.dtype, jnp.unsignedinteger):
      return x ^ flag.astype(x.dtype)
    if jnp.issubdtype(x.dtype, jnp.floating):
      return jnp.where(flag, jnp.asarray(jnp.nan, x.dtype), x)
    return x

  return jax.tree_util.tree_map(tie, tree)


def _apply_saving(fn, params, x, aux, rng):
  """`(fn(x), the state it keeps for the backward pass or None)`."""
  if getattr(fn, "saves_state", False):
    return fn(params, x, aux, rng, save_state=True)
  return fn(params, x, aux, rng), None


def _layer_forward(fns, params, rngs, x1, x2, aux):
  """One layer's outputs `(y1, y2)` and the states `(F's, G's)` its blocks keep."""
  (f, g), (pf, pg), (rf, rg) = fns, params, rngs
  pf, rf = _tie((pf, rf), x2)
  out, state_f = _apply_saving(f, pf, x2, aux, rf)
  x1 = x1 + out.astype(x1.dtype)
  pg, rg = _tie((pg, rg), x1)
  out, state_g = _apply_saving(g, pg, x1, aux, rg)
  x2 = x2 + out.astype(x2.dtype)
  return x1, x2, (state_f, state_g)


def _block_backward(fn, params, rng, aux, x, y, dx, dy, after=None, state=None):
  """Rebuilds `y - fn(x)` and back-propagates `dy` through `fn` at `x`.

  Returns `(y - fn(x), dx + d/dx, d/dparams)`; `state`: what `fn` kept in the forward
  pass (None if nothing), given back to it. A `fn` with a `rebuild_vjp` method (see
  `reversible_layers`) computes all three in one pass where it can. A position-wise `fn`
  (one with a `position_chunk` attribute) is done chunk by chunk in one loop
  that writes the rebuilt input and the input gradient in place: one forward and one
  backward pass per chunk, and no full-length output or gradient buffers. Any other `fn`
  starts after the gradients `after` of the block before are done; a position-wise one
  only where its gradients are split over devices (`_splits_grads`: else the loop's
  gradients are done with it, and tying it too costs the 6-layer model ~15% of XLA's
  buffer packing; split, the feed-forward's gathered parameters and hidden activations
  would wait beside the attention backward above it: enwik8 under fsdp=8, 0.57 -> 0.50 GiB).
  """
  axis, length = x.ndim - 2, x.shape[-2]
  chunk = min(getattr(fn, "position_chunk", None) or 0, length)
  if not chunk or length % chunk:
    params, rng = _tie((params, rng), (x, after))
    kept = {} if state is None else {"state": state}
    rebuild_vjp = getattr(fn, "rebuild_vjp", None)
    fused = None if rebuild_vjp is None else rebuild_vjp(params, x, aux, rng, y, dx, dy,
                                                         **kept)
    if fused is not None:
      return fused
    out, vjp = jax.vjp(lambda p, x: fn(p, x, aux, rng, **kept), params, x)
    d_params, d_x = vjp(dy.astype(out.dtype))
    return (y - out).astype(y.dtype), dx + d_x.astype(dx.dtype), d_params

  # 16-bit streams travel through the loop as uint16 bits: XLA:CPU upcasts bfloat16
  # arithmetic and would hoist a float32 copy of each whole stream out of the loop.
  params, rng = _tie((params, rng), (x, after) if _splits_grads(fn) else x)
  dtypes = {"x": x.dtype, "y": y.dtype, "dx": dx.dtype, "dy": dy.dtype}
  x, y, dx, dy = (to_bits(t) for t in (x, y, dx, dy))

  def body(i, carry):
    y, dx, d_params = carry
    start = i * chunk
    cut = lambda t, name: from_bits(jax.lax.dynamic_slice_in_dim(t, start, chunk, axis=axis),
                                     dtypes[name])
    put = lambda t, v, name: jax.lax.dynamic_update_slice_in_dim(
        t, to_bits(v.astype(dtypes[name])), start, axis)
    out, vjp = jax.vjp(lambda p, x: fn(p, x, aux, rng, chunk_index=i), params, cut(x, "x"))
    d_p, d_x = vjp(cut(dy, "dy").astype(out.dtype))
    return (put(y, cut(y, "y") - out, "y"), put(dx, cut(dx, "dx") + d_x, "dx"),
            jax.tree_util.tree_map(jnp.add, d_params, d_p))

  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  y, dx, d_params = jax.lax.fori_loop(0, length // chunk, body, (y, dx, zeros))
  return from_bits(y, dtypes["y"]), from_bits(dx, dtypes["dx"]), d_params


def _splits_grads(fn) -> bool:
  """Whether block `fn`'s parameter gradients are placed split over devices (fsdp)."""
  sharding = getattr(fn, "grad_sharding", None)
  return sharding is not None and not all(
      s.is_fully_replicated for s in jax.tree_util.tree_leaves(sharding))


def _any_nan(tree) -> jnp.ndarray:
  """bool []: whether an element of the float arrays of `tree` is NaN; a max over each, which
  each device computes on its own shard."""
  flag = jnp.zeros((), bool)
  for x in jax.tree_util.tree_leaves(tree):
    top = jnp.max(x)
    flag = flag | (top != top)
  return flag


def _waited_on(fn, grads):
  """The `after` of the next block's backward once block `fn`'s gradients `grads` are
  done: `grads`, or where they are split over devices, a float32 scalar, NaN if one of
  them is (`_tie` reads a flat first element, and the partitioner gathers an array split
  on an inner dimension whole to get it)."""
  if not _splits_grads(fn):
    return grads
  return jnp.where(_any_nan(grads), jnp.float32(jnp.nan), jnp.float32(0.))


def _placed(fn, grads):
  """A block's parameter gradients `grads` placed like its parameters (`fn.grad_sharding`,
  when set): each device reduces only its part of them, block by block (fsdp), instead of
  every layer's whole gradient waiting for the end of the step.

  Where some are split, they leave through a conditional (NaN everywhere if one is NaN,
  as the step's guard rejects such a step anyway). Without it, XLA:CPU all-reduces a
  gradient whole and fuses the slice each device keeps into the step's last operations
  (the division by the token count, the update), so every layer's whole reduced gradient
  stayed alive until then; a conditional's operands are materialised where it runs, so
  each whole gradient dies with its block (enwik8 at 2,048 tokens under fsdp=8, XLA:CPU:
  peak 0.876 -> 0.569 GiB).
  """
  sharding = getattr(fn, "grad_sharding", None)
  if sharding is None:
    return grads
  grads = jax.lax.with_sharding_constraint(grads, sharding)
  if not _splits_grads(fn):
    return grads
  return jax.lax.cond(_any_nan(grads),
                      lambda t: jax.tree_util.tree_map(lambda x: x * jnp.nan, t),
                      lambda t: t, grads)


def _layer_backward(fns, params, rngs, states, y1, y2, dy1, dy2, aux, after=None):
  """Rebuilds one layer's inputs from its outputs and back-propagates through it, after
  `after` (the layer above's `_waited_on`) is done. Returns its rebuilt inputs, their
  gradients, its parameter gradients and what the layer below waits for."""
  (f, g), (pf, pg), (rf, rg), (sf, sg) = fns, params, rngs, states
  x2, dy1, dpg = _block_backward(g, pg, rg, aux, y1, y2, dy1, dy2, after, sg)
  dpg = _placed(g, dpg)
  x1, dy2, dpf = _block_backward(f, pf, rf, aux, x2, y1, dy2, dy1, _waited_on(g, dpg), sf)
  grads = (_placed(f, dpf), dpg)
  return x1, x2, dy1, dy2, grads, _waited_on(f, grads)


def _signature(tree):
  return jax.tree_util.tree_structure(tree), [(x.shape, x.dtype)
                                             for x in jax.tree_util.tree_leaves(tree)]


def _period(fns, params, rngs) -> int:
  """Smallest p such that layer i equals layer i - p (functions, shapes) for all i >= p."""
  n = len(fns)
  signatures = [_signature((p, r)) for p, r in zip(params, rngs)]
  for p in range(1, n + 1):
    if all(fns[i] == fns[i - p] and signatures[i] == signatures[i - p] for i in range(p, n)):
      return p
  return n


def _stack(trees):
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _plan(fns, params, rngs, scan):
  """Splits the layers into `n_cycles` scanned cycles of `period` layers plus the rest."""
  if not scan:
    return 0, 0
  period = _period(fns, params, rngs)
  n_cycles = len(fns) // period
  if n_cycles < 2:
    return 0, 0
  return period, n_cycles


def _cycle_inputs(params, rngs, period, n_cycles):
  """Per position in the cycle, the layers' params and rngs stacked over the cycles."""
  return tuple((_stack([params[c * period + j] for c in range(n_cycles)]),
                _stack([rngs[c * period + j] for c in range(n_cycles)]))
               for j in range(period))


def _forward(fns, params, rngs, x1, x2, aux, scan):
  """`(y1, y2, states)`: the layers' kept states, one pair per layer (for scanned cycles,
  one pair per position in the cycle, stacked over the cycles)."""
  period, n_cycles = _plan(fns, params, rngs, scan)
  start = period * n_cycles
  states = [None] * len(fns)
  if n_cycles:
    def cycle(carry, xs):
      x1, x2 = carry
      kept = []
      for j in range(period):
        x1, x2, state = _layer_forward(fns[j], xs[j][0], xs[j][1], x1, x2, aux)
        kept.append(state)
      return (x1, x2), tuple(kept)

    (x1, x2), stacked = jax.lax.scan(cycle, (x1, x2),
                                     _cycle_inputs(params, rngs, period, n_cycles))
    states[:period] = stacked
  for i in range(start, len(fns)):
    x1, x2, states[i] = _layer_forward(fns[i], params[i], rngs[i], x1, x2, aux)
  return x1, x2, tuple(states)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 6))
def reversible_layers(fns: Sequence[Tuple[BlockFn, BlockFn]], params: Sequence[Tuple[Any, Any]],
                      rngs: Sequence[Tuple[Any, Any]], x1: jnp.ndarray, x2: jnp.ndarray,
                      aux: Any, scan: bool = False) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Applies reversible layers `y1 = x1 + F(x2); y2 = x2 + G(y1)` in sequence.

  Layers are unrolled, or with `scan=True`, those repeating with a period (equal
  functions, same parameter and rng shapes) run as a `lax.scan` over the cycles.

  Args:
    fns: static tuple with one `(F, G)` pair of pure functions per layer, each called as
      `F(params, x, aux, rng) -> y` with `y` shaped like `x`. Equal (`==`) functions at
      the same position of a cycle allow scanning. A position-wise function may declare
      an int attribute `position_chunk` and accept `chunk_index=i`, returning its output
      on positions `[i * c, (i + 1) * c)` (axis -2) from those positions of `x` alone, with
      `c = min(position_chunk, length)`; when `c` divides the length, the backward pass
      rebuilds and differentiates it chunk by chunk, in place. A function may instead
      have a method `rebuild_vjp(params, x, aux, rng, y, dx, dy)` returning `(y - F(x),
      dx + dF/dx^T dy, dF/dparams^T dy)`, computed in one pass (e.g. attention, whose
      backward recomputes its forward anyway), or None where it cannot. A function with
      a true attribute `saves_state` is called as `F(..., save_state=True) -> (y, state)`
      in the forward pass and gets `state=state` in the backward (plain calls and
      `rebuild_vjp`); `state` is a pytree of arrays (or None) kept until then.
    params: tuple with one `(params_F, params_G)` pair of pytrees per layer (differentiated).
    rngs: tuple with one `(rng_F, rng_G)` pair per layer: PRNG keys, or pytrees of keys and
      other per-layer inputs that are not differentiated (None allowed). The backward pass
      calls F and G with the same values as the forward pass.
    x1: first stream `[..., d]`.
    x2: second stream, same shape as `x1`.
    aux: pytree of inputs that are not differentiated (padding mask, ...), passed to every
      F and G.
    scan: static; scan repeating cycles of layers (compile time flat in depth, more
      memory; see the module docstring) instead of unrolling every layer.

  Returns:
    `(y1, y2)`, the two output streams. The gradient wrt `rngs` and `aux` is zero.
  """
  return _forward(fns, params, rngs, x1, x2, aux, scan)[:2]


def _reversible_fwd(fns, params, rngs, x1, x2, aux, scan):
  y1, y2, states = _forward(fns, params, rngs, x1, x2, aux, scan)
  return (y1, y2), (params, rngs, states, y1, y2, aux)


def _reversible_bwd(fns, scan, residuals, cotangents):
  params, rngs, states, y1, y2, aux = residuals
  dy1, dy2 = cotangents
  period, n_cycles = _plan(fns, params, rngs, scan)
  start = period * n_cycles
  dparams, after = [None] * len(fns), None
  for i in reversed(range(start, len(fns))):
    y1, y2, dy1, dy2, dparams[i], after = _layer_backward(
        fns[i], params[i], rngs[i], states[i], y1, y2, dy1, dy2, aux, after)
  if n_cycles:
    def cycle(carry, xs):
      y1, y2, dy1, dy2 = carry
      inputs, kept = xs
      grads, after = [None] * period, None
      for j in reversed(range(period)):
        y1, y2, dy1, dy2, grads[j], after = _layer_backward(
            fns[j], inputs[j][0], inputs[j][1], kept[j], y1, y2, dy1, dy2, aux, after)
      return (y1, y2, dy1, dy2), tuple(grads)

    (y1, y2, dy1, dy2), grads = jax.lax.scan(
        cycle, (y1, y2, dy1, dy2),
        (_cycle_inputs(params, rngs, period, n_cycles), states[:period]), reverse=True)
    for c in range(n_cycles):
      for j in range(period):
        dparams[c * period + j] = jax.tree_util.tree_map(lambda g, c=c: g[c], grads[j])
  return tuple(dparams), None, dy1, dy2, None


reversible_layers.defvjp(_reversible_fwd, _reversible_bwd)


@dataclasses.dataclass(frozen=True)
class _BlockFn:
  """A block definition as a pure `F(params, x, aux, rng)`; equal blocks give equal fns.

  `rng` is `{'rngs': {stream: key}, 'layer_aux': per-layer input}`. `grad_sharding`: the
  shardings of the block's parameters while a sharded step is traced
  (`logical_axes.param_sharding`), its gradients placed so in the backward pass; else None.
  """
  block: nn.Module
  deterministic: bool
  grad_sharding: Any = dataclasses.field(default=None, hash=False)

  @property
  def position_chunk(self) -> Optional[int]:
    return getattr(self.block, "position_chunk", None)

  @property
  def saves_state(self) -> bool:
    return getattr(self.block, "saves_state", False)

  def _gathered(self, params):
    """`params` gathered whole over the batch axes where the block uses them (fsdp), except
    on XLA:CPU (`xla_cpu` 'partitioner_gathers')."""
    if not _splits_grads(self) or xla_cpu.kept("partitioner_gathers"):
      return params
    return jax.lax.with_sharding_constraint(params,
                                            logical_axes.gathered(self.grad_sharding))

  def __call__(self, params, x, aux, rng, **options):
    """`options`: `chunk_index=`, `save_state=`, `state=` (see `reversible_layers`)."""
    params = self._gathered(params)
    x = logical_axes.constrain_batch(x)
    return self.block.apply({"params": params}, x, aux, rng["layer_aux"],
                            deterministic=self.deterministic, rngs=rng["rngs"], **options)

  def rebuild_vjp(self, params, x, aux, rng, y, dx, dy, **state):
    if not getattr(self.block, "rebuilds", False):
      return None
    params = self._gathered(params)
    x = logical_axes.constrain_batch(x)
    return self.block.apply({"params": params}, x, aux, rng["layer_aux"],
                            deterministic=self.deterministic, rngs=rng["rngs"],
                            rebuild=(y, dx, dy), **state)


def _decode_block(block, params, x, aux, layer_aux, decode, cache):
  """`(block's output on x, its new 'cache' collection)`; a block that does not decode
  is applied as it is, its cache None."""
  if not getattr(block, "decodes", False):
    return block.apply({"params": params}, x, aux, layer_aux, deterministic=True), None
  variables = {"params": params} if cache is None else {"params": params, "cache": cache}
  out, state = block.apply(variables, x, aux, layer_aux, deterministic=True, decode=decode,
                           mutable=["cache"])
  return out, state["cache"]


class ReversibleStack(nn.Module):
  """A stack of reversible layers built from flax block definitions.

  Attributes:
    blocks: one `(F, G)` pair of *unbound* module definitions per layer, e.g.
      `(AttentionBlock(...), FeedForwardBlock(...))`. Every block is called as
      `block(x [..., d], aux, layer_aux, deterministic=bool) -> [..., d]` and may use the
      rng streams 'dropout' (only drawn when not deterministic) and 'hash'. A
      position-wise block may define a `position_chunk` property and accept
      `chunk_index=` (see `reversible_layers`) to be rebuilt and differentiated in place.
      A block with a true class attribute `rebuilds` accepts `rebuild=(y, dx, dy)` and
      returns `(y - out, dx + dout/dx^T dy, param grads)` or None (`rebuild_vjp` of
      `reversible_layers`). A block with a true class attribute `saves_state` accepts
      `save_state=True` (returns `(out, state)`) and `state=` (`reversible_layers`).
      A block with a true class attribute `decodes` accepts `decode=` and keeps what
      cached decoding needs in its 'cache' collection (see `__call__`).
      Blocks must be pure functions of their parameters: only the 'params' collection is
      carried, so a block with batch statistics (`nn.BatchNorm`) or sown values
      (`self.sow`) raises at init; use LayerNorm, or compute such values outside the stack.
    names: names of the F and G parameter subtrees inside each layer.
    reversible: if False, the same layers are run as plain residual code under ordinary
      autodiff (stores every layer's activations); for debugging and memory comparisons.
    scan: run layers whose definitions repeat with a period as a `lax.scan` over the
      cycles (compile time flat in depth, more memory; see `reversible_layers`) instead of
      unrolling them.
    deterministic: disables dropout; merged with the `__call__` argument.

  Parameter tree: `{'layer_0': {names[0]: <F params>, names[1]: <G params>}, 'layer_1': ...}`,
  each layer one parameter holding the nested dicts of its two blocks. Cache tree (when
  decoding): `{'layer_0': {names[0]: <F cache>}, ...}` for the blocks that decode.
  """
  blocks: Sequence[Tuple[nn.Module, nn.Module]]
  names: Tuple[str, str] = ("attention", "feed_forward")
  reversible: bool = True
  scan: bool = False
  deterministic: Optional[bool] = None

  @nn.compact
  def __call__(self, x1: jnp.ndarray, x2: jnp.ndarray, aux: Any = None,
               deterministic: Optional[bool] = None,
               layer_aux: Optional[Sequence[Any]] = None,
               decode: Optional[Any] = None) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Runs the layers on the streams `x1`, `x2` (`[..., d]`) and returns `(y1, y2)`.

    `aux` is passed to every block; `layer_aux[i]` (e.g. LSH rotations) to the blocks of
    layer i only (None when not given).
    `decode`: cached decoding (e.g. `kv_cache.Prefill` or `kv_cache.Step`): the layers run
    forward one after the other, deterministic, no `custom_vjp` or scan; blocks that
    `decode` get `decode=` with their 'cache' collection, kept in this stack's 'cache'
    collection (apply with `mutable=['cache']`); the others must be position-wise.
    """
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if x1.shape != x2.shape:
      raise ValueError(f"the two streams must have the same shape; got {x1.shape} and "
                       f"{x2.shape} (start both from the embeddings: x1 = x2 = x)")
    if len(self.names) != 2 or self.names[0] == self.names[1]:
      raise ValueError(f"names must be two distinct strings, got {self.names}")
    n_layers = len(self.blocks)
    if layer_aux is None:
      layer_aux = (None,) * n_layers
    if len(layer_aux) != n_layers:
      raise ValueError(f"layer_aux has {len(layer_aux)} entries for {n_layers} layers; give "
                       "one per layer (None for layers that need none)")
    fns, params, rngs = [], [], []
    for i, pair in enumerate(self.blocks):
      f_block, g_block = (b.clone(parent=None, name=None) for b in pair)
      axes = {}
      layer = self.param(f"layer_{i}", self._init_layer, f_block, g_block, x2, aux,
                         layer_aux[i], axes)
      logical_axes.declare(self, f"layer_{i}", axes)
      placed = logical_axes.param_sharding(self.path + (f"layer_{i}",)) or {}
      fns.append(tuple(_BlockFn(b, deterministic, placed.get(n))
                       for b, n in zip((f_block, g_block), self.names)))
      params.append((layer[self.names[0]], layer[self.names[1]]))
      rngs.append(tuple({"rngs": self._block_rngs(deterministic), "layer_aux": layer_aux[i]}
                        for _ in range(2)))
    fns, params, rngs = tuple(fns), tuple(params), tuple(rngs)
    if decode is not None:
      return self._decode(fns, params, x1, x2, aux, layer_aux, decode)
    if self.reversible:
      return reversible_layers(fns, params, rngs, x1, x2, aux, self.scan)
    return _forward(fns, params, rngs, x1, x2, aux, self.scan)[:2]

  def _decode(self, fns, params, x1, x2, aux, layer_aux, decode):
    """`(y1, y2)` of the layers run forward in decoding mode `decode`, updating the caches."""
    for i, ((f, g), (pf, pg)) in enumerate(zip(fns, params)):
      name = f"layer_{i}"
      cached = self.get_variable("cache", name, {})
      out, cache_f = _decode_block(f.block, pf, x2, aux, layer_aux[i], decode,
                                   cached.get(self.names[0]))
      x1 = x1 + out.astype(x1.dtype)
      out, cache_g = _decode_block(g.block, pg, x1, aux, layer_aux[i], decode,
                                   cached.get(self.names[1]))
      x2 = x2 + out.astype(x2.dtype)
      kept = {n: c for n, c in zip(self.names, (cache_f, cache_g)) if c is not None}
      if kept:
        self.put_variable("cache", name, kept)
    return x1, x2

  def _init_layer(self, rng, f_block, g_block, x, aux, layer_aux, axes):
    """The layer's parameters {names[0]: F's, names[1]: G's}; fills `axes` with their
    logical axes (`logical_axes.COLLECTION` of the blocks' init)."""
    keys = jax.random.split(rng, 4)
    init_rngs = {"dropout": keys[2], "hash": keys[3]}
    layer = {}
    for name, block, key in zip(self.names, (f_block, g_block), keys[:2]):
      variables = block.init({"params": key, **init_rngs}, x, aux, layer_aux,
                             deterministic=True, mutable=True)
      others = sorted(set(variables) - {"params", logical_axes.COLLECTION})
      if others:
        raise ValueError(f"reversible block {name!r} ({type(block).__name__}) has variable "
                         f"collections {others} besides 'params'; reversible blocks must be "
                         "pure functions of their params (no batch statistics or sown "
                         "values): use LayerNorm instead of BatchNorm, or compute the value "
                         "outside the stack")
      layer[name] = variables["params"]
      axes[name] = variables.get(logical_axes.COLLECTION, {})
    return layer

  def _block_rngs(self, deterministic):
    rngs = {}
    if not deterministic and self.has_rng("dropout"):
      rngs["dropout"] = self.make_rng("dropout")
    if self.has_rng("hash"):
      rngs["hash"] = self.make_rng("hash")
    return rngs
