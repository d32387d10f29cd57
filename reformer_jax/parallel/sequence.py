"""Sequence parallelism: each sequence split into contiguous slices over a mesh axis.

`SequenceParallel(model, mesh)` runs a `ReformerLM` (or `ReformerForMaskedLM`) inside
`shard_map`: each device of the `sequence` axis holds `L / D` consecutive positions of
every sequence for the whole model, the embeddings, positional encodings (computed for its
own positions), layer norms, chunked feed-forward, both reversible streams and the loss;
the loss sums are added over the devices (`psum`). Only attention crosses slices: local
attention through a halo of neighbour chunks (`local_slice_block`), LSH attention through
exchanges into the sorted order and back (`lsh_slices`); both are exact, and the
reversible backward pass rebuilds each layer in place through the same exchanges. The
batch may also be sharded over other mesh axes (`batch_axes`).

The sequence is padded at the end (masked, weight 0) to a multiple of `multiple()` so that
every slice holds whole chunks; the result equals one device's on that padded batch (for
causal models the real positions' results do not depend on the padding anyway). Full
attention is refused. Dropout masks differ from one device's (each slice folds its index
into the 'dropout' key); hash rotations are the same on every device.
"""
import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from reformer_jax.layers.chunking import pad_axis, pad_length
from reformer_jax.models.config import ReformerConfig, position_limit
from reformer_jax.models.reformer_lm import ReformerLM
from reformer_jax.trainer.sharding import BATCH_AXES

AXIS = "sequence"


def over_mesh(model: nn.Module, mesh: Mesh) -> nn.Module:
  """`model` as the trainer's steps run it on `mesh`: in `SequenceParallel` when the mesh's
  `sequence` axis (`MeshConfig.sequence`) has several devices, the batch split over
  data x fsdp; else `model` itself. Raises ValueError (one line) for a model that
  sequence parallelism does not run, or full attention."""
  if mesh.shape.get(AXIS, 1) == 1:
    return model
  if not isinstance(model, ReformerLM):
    raise ValueError(f"MeshConfig.sequence={mesh.shape[AXIS]} runs language models (causal or "
                     f"masked LM tasks); this task's {type(model).__name__} reads whole "
                     "sequences: set MeshConfig.sequence=1")
  parallel = SequenceParallel(model, mesh, batch_axes=BATCH_AXES)
  parallel.sliced_model()  # refuses full attention now
  return parallel


def batch_sharding(mesh: Mesh, batch_axis: int) -> NamedSharding:
  """A batch `[..., batch, length]` split over data x fsdp on `batch_axis` and over the
  `sequence` axis on the next (the length)."""
  return NamedSharding(mesh, P(*([None] * batch_axis), BATCH_AXES, AXIS))


def slice_multiple(config: ReformerConfig, n_devices: int) -> int:
  """The lengths that split into whole chunks on `n_devices` slices are multiples of this."""
  types = set(config.layer_attention_types())
  chunks = [config.local_chunk_len] * ("local" in types) + [config.lsh_chunk_len] * ("lsh" in types)
  return n_devices * math.lcm(*chunks)


@dataclasses.dataclass(frozen=True)
class SequenceParallel:
  """`model.apply` for the loss sums, with the sequence sharded over `axis` of `mesh`.

  Attributes:
    model: a `ReformerLM` (or a subclass with its call signature), built as for one device.
    mesh: the device mesh.
    axis: the mesh axis the positions are split over.
    batch_axes: mesh axes the batch is split over (their product divides the batch).
  """
  model: nn.Module
  mesh: Mesh
  axis: str = AXIS
  batch_axes: Tuple[str, ...] = ()

  @property
  def config(self) -> ReformerConfig:
    return self.model.config

  @property
  def n_devices(self) -> int:
    return self.mesh.shape[self.axis]

  def multiple(self) -> int:
    """Sequences are padded to a multiple of this (`slice_multiple`)."""
    return slice_multiple(self.config, self.n_devices)

  def sliced_model(self) -> nn.Module:
    """The model as each device runs it (raises for full attention)."""
    return self.model.clone(config=self.config.replace(sequence_axis=self.axis))

  def apply(self, variables: Dict[str, Any], tokens: jnp.ndarray,
            mask: Optional[jnp.ndarray] = None, *, targets: Optional[jnp.ndarray] = None,
            weights: Optional[jnp.ndarray] = None, rngs: Optional[Dict[str, Any]] = None,
            lsh_rotations=None, deterministic: Optional[bool] = None) -> Dict[str, jnp.ndarray]:
    """The loss sums {'loss', 'weight', 'correct'} of `ReformerLM(...)(tokens, mask,
    targets=, weights=)`, all `[batch, length]`, summed over every device."""
    if targets is None:
      raise ValueError("SequenceParallel computes the loss sums: pass targets (run logits and "
                       "decoding on one device)")
    sliced = self.sliced_model()
    batch, length = tokens.shape
    padded = pad_length(length, self.multiple())
    limit = position_limit(self.config)
    if limit is not None and padded > limit:
      raise ValueError(f"the sequence is padded to {padded} positions (a multiple of "
                       f"{self.multiple()}: whole chunks on each of the {self.n_devices} "
                       f"'{self.axis}' devices) but the position table covers {limit}: "
                       f"enlarge axial_shape / max_len, or use a length that is a multiple")
    real = jnp.ones(tokens.shape, bool) if mask is None else mask.astype(bool)
    if weights is None:
      weights = real.astype(jnp.float32)
    pad = lambda t, value=0: pad_axis(t, padded, axis=1, value=value)
    inputs = (pad(tokens), pad(real, False), pad(targets), pad(weights))
    n_local = padded // self.n_devices

    def body(params, tokens, mask, targets, weights, rngs, rotations):
      index = jax.lax.axis_index(self.axis)
      positions = jnp.broadcast_to(index * n_local + jnp.arange(n_local, dtype=jnp.int32),
                                   tokens.shape)
      rngs = {name: jax.random.fold_in(key, index) if name == "dropout" else key
              for name, key in (rngs or {}).items()}
      sums = sliced.apply({"params": params}, tokens, mask, targets=targets,
                          weights=weights, positions=positions, lsh_rotations=rotations,
                          deterministic=deterministic, rngs=rngs)
      return jax.lax.psum(sums, (self.axis,) + tuple(self.batch_axes))

    rows = P(tuple(self.batch_axes) or None, self.axis)
    # check_vma=False: the layers' loops start from replicated zeros (e.g. gradient
    # accumulators) and carry per-device values; gradients of the replicated parameters
    # are still summed over the devices (shard_map's transpose of a replicated input).
    run = jax.shard_map(body, mesh=self.mesh, in_specs=(P(), rows, rows, rows, rows, P(), P()),
                        out_specs=P(), check_vma=False)
    return run(variables["params"], *inputs, rngs, lsh_rotations)
