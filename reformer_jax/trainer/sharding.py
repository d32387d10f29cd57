"""Data parallelism: a 1-D mesh over all devices, batch sharded, params replicated."""
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


def make_mesh(devices: Optional[Sequence] = None) -> Mesh:
  """A mesh with one axis, 'data', over `devices` (default: every device; a TPU topology's
  compile-only devices when planning, `plan.py`)."""
  return Mesh(np.asarray(jax.devices() if devices is None else list(devices)), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  """Shards dimension `batch_axis` over 'data'; the other dimensions are whole."""
  return NamedSharding(mesh, P(*([None] * batch_axis), AXIS))


def check_batch(batch_size: int, mesh: Mesh, what: str):
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(
        f"{what}={batch_size} must be a multiple of the {n} devices; use "
        f"{max(n, batch_size // n * n)} or {(batch_size // n + 1) * n}.")


def put(tree, sharding: NamedSharding):
  """Places a tree of host arrays on the mesh with `sharding`."""
  return jax.tree.map(lambda x: jax.device_put(np.asarray(x), sharding), tree)
