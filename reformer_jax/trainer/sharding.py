"""The device mesh and where arrays live on it.

The mesh has four named axes (`MeshConfig`, gin: `MeshConfig.data` etc.): `data` (batch
split, state whole on every device), `fsdp` (batch split and each parameter and its
optimiser moments split too: fully sharded data parallelism), `sequence` (positions split;
for sequence parallelism, size 1 here) and `tensor` (attention heads, feed-forward width and
vocabulary split). Parameters are placed by the logical names of their dimensions
(`layers/logical_axes.py`) through a rule table, t5x / MaxText style: by default
embed -> fsdp, heads / mlp / vocab -> tensor, the rest whole. The optimiser state is placed
like its parameter, a batch over data x fsdp.
"""
import dataclasses
import math
from typing import Dict, Optional, Sequence, Tuple, Union

import flax
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from reformer_jax.layers import logical_axes

# Outermost first: the last axes vary fastest over the devices, so they stay inside a host
# (and inside a TPU's fast interconnect): tensor talks most, every layer; then sequence;
# fsdp gathers parameters once per step; data only reduces gradients.
AXES = ("data", "fsdp", "sequence", "tensor")
BATCH_AXES = ("data", "fsdp")

Rule = Tuple[str, Union[None, str, Tuple[str, ...]]]
DEFAULT_RULES: Tuple[Rule, ...] = (
    (logical_axes.EMBED, "fsdp"),
    (logical_axes.HEADS, "tensor"),
    (logical_axes.MLP, "tensor"),
    (logical_axes.VOCAB, "tensor"),
    (logical_axes.NORM, None),
    (logical_axes.POSITION, None),
    (logical_axes.CLASSES, None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """The device mesh (gin: `MeshConfig.*`).

  Attributes:
    data, fsdp, sequence, tensor: the axis sizes; their product is the device count of all
      hosts together; one of them may be -1: the devices the others leave. Default: every
      device on `data` (parameters replicated).
    rules: (logical axis, mesh axis | tuple of mesh axes | None) pairs: where each logical
      axis of the parameters goes (`layers/logical_axes.NAMES`); a logical axis not listed
      stays whole. A dimension whose size the mesh axes do not divide stays whole.
  """
  data: int = -1
  fsdp: int = 1
  sequence: int = 1
  tensor: int = 1
  rules: Tuple[Rule, ...] = DEFAULT_RULES

  def __post_init__(self):
    sizes = [getattr(self, a) for a in AXES]
    for axis, size in zip(AXES, sizes):
      if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
        raise ValueError(f"MeshConfig.{axis} must be a positive int or -1 (the devices the "
                         f"other axes leave), got {size!r}.")
    if sizes.count(-1) > 1:
      raise ValueError(f"MeshConfig: only one axis may be -1, got {self.sizes_text()}; give "
                       "the others sizes.")
    seen = set()
    for rule in self.rules:
      if not (isinstance(rule, (tuple, list)) and len(rule) == 2):
        raise ValueError(f"MeshConfig.rules: each rule is (logical axis, mesh axes), got "
                         f"{rule!r}.")
      name, target = rule
      if name not in logical_axes.NAMES:
        raise ValueError(f"MeshConfig.rules: unknown logical axis {name!r}; the parameters' "
                         f"logical axes are {', '.join(logical_axes.NAMES)}.")
      if name in seen:
        raise ValueError(f"MeshConfig.rules: logical axis {name!r} has two rules; keep one.")
      seen.add(name)
      unknown = [a for a in _as_axes(target) if a not in AXES]
      if unknown:
        raise ValueError(f"MeshConfig.rules: ({name!r}, {target!r}) names unknown mesh axes "
                         f"{unknown}; the mesh axes are {', '.join(AXES)} (or None: whole).")

  def sizes_text(self) -> str:
    return " x ".join(f"{a}={getattr(self, a)}" for a in AXES)

  def shape(self, n_devices: int) -> Dict[str, int]:
    """{axis: size} for `n_devices` devices (-1 resolved). Raises ValueError (one line) if
    the sizes do not multiply to `n_devices`."""
    sizes = {a: getattr(self, a) for a in AXES}
    known = math.prod(s for s in sizes.values() if s != -1)
    free = [a for a, s in sizes.items() if s == -1]
    if free and n_devices % known == 0:
      sizes[free[0]] = n_devices // known
    if math.prod(sizes.values()) != n_devices:
      needs = f"a multiple of {known}" if free else str(known)
      raise ValueError(f"the mesh {self.sizes_text()} needs {needs} devices but there are "
                       f"{n_devices}; set MeshConfig sizes that multiply to {n_devices} "
                       "(one may be -1: the rest).")
    return sizes

  def axis_size(self, mesh: Mesh, logical: str) -> int:
    """How many ways `mesh` splits the logical axis `logical` under `rules`."""
    return math.prod(mesh.shape[a] for a in _as_axes(dict(self.rules).get(logical)))


def _as_axes(target) -> Tuple[str, ...]:
  if target is None:
    return ()
  return (target,) if isinstance(target, str) else tuple(target)


def make_mesh(config: MeshConfig = MeshConfig(), devices: Optional[Sequence] = None) -> Mesh:
  """The mesh of `config` over `devices` (default: every device of every host; a TPU
  topology's compile-only devices when planning, `plan.py`), axes `AXES` in that order."""
  devices = list(jax.devices() if devices is None else devices)
  shape = tuple(config.shape(len(devices)).values())
  try:  # orders the devices along the physical topology (TPU ICI rings)
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES),
                         devices=devices)
  except (ValueError, NotImplementedError):
    # A shape that does not map onto the chips' physical axes: take them in order.
    return Mesh(np.asarray(devices).reshape(shape), AXES,
                axis_types=(AxisType.Auto,) * len(AXES))


def describe(mesh: Mesh) -> str:
  """'data=2 x fsdp=4 x sequence=1 x tensor=1 (8 cpu devices, 1 process)'."""
  devices, processes = mesh.devices.size, len({d.process_index for d in mesh.devices.flat})
  return (" x ".join(f"{a}={n}" for a, n in mesh.shape.items()) +
          f" ({devices} {mesh.devices.flat[0].platform} device{'s' * (devices > 1)}, "
          f"{processes} process{'es' * (processes > 1)})")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  """Shards dimension `batch_axis` over data x fsdp; the other dimensions are whole."""
  return NamedSharding(mesh, P(*([None] * batch_axis), BATCH_AXES))


def batch_ways(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch(batch_size: int, mesh: Mesh, what: str):
  """Raises ValueError (one line) unless data x fsdp divides `batch_size`."""
  n = batch_ways(mesh)
  if batch_size % n:
    fits = sorted({max(n, batch_size // n * n), (batch_size // n + 1) * n})
    raise ValueError(
        f"{what}={batch_size} must be a multiple of MeshConfig.data x MeshConfig.fsdp = {n} "
        f"(the batch is split over them); use {' or '.join(map(str, fits))}.")


def check_model(config, mesh: Mesh, mesh_config: MeshConfig):
  """Raises ValueError (one line) if the mesh splits the heads or the feed-forward width
  into unequal parts (`config`: a ReformerConfig)."""
  for logical, size, name in ((logical_axes.HEADS, config.n_heads, "n_heads"),
                              (logical_axes.MLP, config.d_ff, "d_ff")):
    ways = mesh_config.axis_size(mesh, logical)
    if size % ways:
      raise ValueError(f"ReformerConfig.{name}={size} must be a multiple of the {ways} "
                       f"devices that MeshConfig.rules split {logical!r} over "
                       f"({describe(mesh)}); change {name} or MeshConfig.tensor.")


def mesh_spec(logical: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh,
              rules: Sequence[Rule]) -> P:
  """The PartitionSpec over `mesh` of an array of `shape` whose dimensions have the logical
  names `logical`: each dimension goes to its rule's mesh axes of size > 1 not taken by an
  earlier dimension, and stays whole if they do not divide it."""
  table, used, spec = dict(rules), set(), []
  for name, n in zip(logical, shape):
    axes = tuple(a for a in _as_axes(table.get(name)) if mesh.shape[a] > 1 and a not in used)
    if not axes or n % math.prod(mesh.shape[a] for a in axes):
      spec.append(None)
      continue
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else axes)
  return P(*spec)


def param_shardings(axes, shapes, mesh: Mesh, rules: Sequence[Rule]):
  """NamedShardings of the parameters `shapes` (arrays or ShapeDtypeStructs) from their
  logical axes `axes` (the init's `logical_axes.COLLECTION` collection)."""
  flat_axes = flax.traverse_util.flatten_dict(flax.core.unfreeze(axes))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))
  missing = sorted("/".join(k) for k in flat if k not in flat_axes)
  if missing:
    raise ValueError(f"parameters without logical axes: {', '.join(missing[:5])}; declare "
                     "them (layers/logical_axes.py).")
  return flax.traverse_util.unflatten_dict(
      {k: NamedSharding(mesh, mesh_spec(flat_axes[k].names, v.shape, mesh, rules))
       for k, v in flat.items()})


def like_params(tree, params, shardings, mesh: Mesh):
  """Shardings of `tree` (e.g. an optimiser state): a leaf whose path ends with a
  parameter's path and has its shape is placed like that parameter, any other leaf
  (counters, factored moments) is replicated."""
  by_path = {}
  for (path, p), s in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                          jax.tree.leaves(shardings)):
    by_path[tuple(path)] = (p.shape, s)

  def place(path, leaf):
    for n in range(len(path)):
      found = by_path.get(tuple(path[n:]))
      if found is not None and found[0] == leaf.shape:
        return found[1]
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(place, tree)


def bytes_per_device(shapes) -> int:
  """The bytes one device holds of a tree of sharded arrays or ShapeDtypeStructs (the most
  any device holds)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(shapes))


def put(tree, shardings):
  """Places a tree of host arrays on the mesh: `shardings` is one NamedSharding for every
  leaf, or a tree of them."""
  if isinstance(shardings, NamedSharding):
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x), shardings), tree)
  return jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), tree, shardings)
