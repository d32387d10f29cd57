"""Logical axis names of parameters, for sharding them over a device mesh.

Every parameter names its dimensions (`EMBED`, `HEADS`, ...), the scheme of t5x's
`param_with_axes`: inside `recording()`, `declare` records the names in the `COLLECTION`
('params_axes') collection beside the parameter while that collection is mutable (`init`),
so `model.init(...)` returns `{'params': ..., 'params_axes': ...}` with one
`AxisMetadata(names)` per parameter. Outside it (the default) nothing is recorded: a plain
`init` returns the parameters alone, as flax's NNX bridge needs, and applying the model is
unchanged either way. The trainer records them (`steps.init_variables`) and maps the names
to mesh axes by its rule table (`trainer/sharding.py`).
"""
import contextlib
import contextvars
from typing import Any, Mapping, Sequence, Union

import flax.linen as nn
import jax
from flax.linen.partitioning import AxisMetadata

COLLECTION = "params_axes"

EMBED = "embed"        # d_model (and the 2 * d_model of the final norm and heads)
HEADS = "heads"        # n_heads * d_head of the attention projections, split by heads
MLP = "mlp"            # the feed-forward width d_ff
VOCAB = "vocab"        # the vocabulary
NORM = "norm"          # layer-norm scales and biases
POSITION = "position"  # rows of a position table
CLASSES = "classes"    # a head's outputs (labels, span ends)

NAMES = (EMBED, HEADS, MLP, VOCAB, NORM, POSITION, CLASSES)

Axes = Sequence[str]


_RECORDING = contextvars.ContextVar("recording_axes", default=False)


@contextlib.contextmanager
def recording():
  """While active, `init` records every parameter's logical axes in `COLLECTION`."""
  token = _RECORDING.set(True)
  try:
    yield
  finally:
    _RECORDING.reset(token)


def declare(module: nn.Module, name: str, axes: Union[Axes, Mapping[str, Any]]):
  """Records the logical `axes` of `module`'s parameter `name` (one name per dimension), or,
  given a nested {param: axes} (leaves: names or `AxisMetadata`), of the parameters under
  `name` (a child such as an `nn.Embed`, or a parameter holding a tree). Does nothing
  outside `recording()` or unless the collection is mutable (only at `init`)."""
  if _RECORDING.get() and module.is_mutable_collection(COLLECTION):
    module.put_variable(COLLECTION, name, _metadata(axes))


def _metadata(axes):
  if isinstance(axes, AxisMetadata):
    return axes
  if isinstance(axes, Mapping):
    return {k: _metadata(v) for k, v in axes.items()}
  unknown = [a for a in axes if a not in NAMES]
  if unknown:
    raise ValueError(f"unknown logical axes {unknown}; use {NAMES}")
  return AxisMetadata(names=tuple(axes))


def param(module: nn.Module, name: str, init, shape: Sequence[int], axes: Axes):
  """`module.param(name, init, shape)` with its logical `axes` declared."""
  value = module.param(name, init, tuple(shape))
  declare(module, name, axes)
  return value


_BATCH_SHARDING = contextvars.ContextVar("batch_sharding", default=None)
_PARAM_SHARDINGS = contextvars.ContextVar("param_shardings", default=None)


@contextlib.contextmanager
def split_batch(sharding: jax.sharding.Sharding, param_shardings: Any = None):
  """While a step is traced inside: `constrain_batch` keeps activations in `sharding`
  (e.g. their batch split over data x fsdp, the rest whole), so that the partitioner gathers
  a split parameter instead of moving activations; `param_sharding(path)` gives the
  shardings of the parameters under `path` in `param_shardings` (the tree of the
  parameters' shardings, or None)."""
  token = _BATCH_SHARDING.set(sharding)
  params_token = _PARAM_SHARDINGS.set(param_shardings)
  try:
    yield
  finally:
    _PARAM_SHARDINGS.reset(params_token)
    _BATCH_SHARDING.reset(token)


def param_sharding(path: Sequence[str]) -> Any:
  """The shardings of the parameters under `path` (e.g. ('encoder', 'layer_0')) inside
  `split_batch`; None outside one or where the tree has no such path."""
  tree = _PARAM_SHARDINGS.get()
  for name in path:
    if not isinstance(tree, Mapping) or name not in tree:
      return None
    tree = tree[name]
  return tree


def constrain_batch(x: jax.Array) -> jax.Array:
  """`x` `[batch, ...]` constrained to the `split_batch` sharding; unchanged outside one."""
  sharding = _BATCH_SHARDING.get()
  return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def gathered(shardings: Any) -> Any:
  """`shardings` (a pytree of NamedShardings) without the mesh axes that the `split_batch`
  sharding splits the batch over: a parameter gathered whole over them."""
  batch = _BATCH_SHARDING.get()
  spec = batch.spec[0] if batch is not None and batch.spec else None
  drop = set(spec if isinstance(spec, tuple) else (spec,)) - {None}

  def keep(entry):
    names = tuple(a for a in (entry if isinstance(entry, tuple) else (entry,))
                  if a is not None and a not in drop)
    return names[0] if len(names) == 1 else (names or None)

  return jax.tree_util.tree_map(
      lambda s: jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec(
          *(keep(e) for e in s.spec))), shardings)
