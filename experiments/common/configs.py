"""The benchmarks' model configurations, read through the trainer's gin setup.

`crime_and_punishment()` reads `configs/crime_and_punishment.gin` (model and optimiser),
`enwik8()` reads `configs/enwik8.gin`; `QUICK_CHANGES` shrinks a model for `--quick` runs.
"""
import math
from typing import Any, Dict


def configure_jax():
  """The JAX settings of the trainer's entry points (`reformer_jax.trainer.cli.configure`)."""
  from reformer_jax.trainer import cli  # pylint: disable=import-outside-toplevel
  cli.configure()


def _gin_experiment(gin_file: str):
  from reformer_jax.trainer import gin_setup  # pylint: disable=import-outside-toplevel
  gin_setup.parse([gin_file])
  return gin_setup.make_experiment()


def crime_and_punishment(**changes):
  """(ReformerConfig, OptimizerConfig) of `configs/crime_and_punishment.gin`, with `changes`.

  `changes` are ReformerConfig fields; `dtype` may be given by name ('bfloat16').
  """
  exp = _gin_experiment("crime_and_punishment.gin")
  return exp.model.replace(**_config_changes(changes)), exp.optimizer


def enwik8(**changes):
  """(ReformerConfig, OptimizerConfig) of `configs/enwik8.gin`, with `changes`."""
  exp = _gin_experiment("enwik8.gin")
  return exp.model.replace(**_config_changes(changes)), exp.optimizer


# A tiny version of the crime-and-punishment model for smoke tests (`--quick`): same layer
# pattern and features, small widths and chunks, so compiling takes a few seconds.
QUICK_CHANGES = {"d_model": 32, "d_ff": 64, "d_head": 16, "axial_dims": (8, 24),
                 "lsh_chunk_len": 8, "local_chunk_len": 8, "n_buckets": (4, 8),
                 "ff_chunk_size": 64, "loss_chunk_len": 64}


def _config_changes(changes: Dict[str, Any]) -> Dict[str, Any]:
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  changes = dict(changes)
  for name in ("dtype", "stream_dtype"):
    if isinstance(changes.get(name), str):
      changes[name] = jnp.dtype(changes[name]).type
  for name in ("attention_types", "axial_shape", "axial_dims", "n_buckets"):
    if isinstance(changes.get(name), list):
      changes[name] = tuple(changes[name])
  return changes


def param_count(tree) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(tree))
