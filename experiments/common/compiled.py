"""Compiled memory: the trainer's own train step compiled for abstract shapes.

`compile_train_step` compiles `reformer_jax.trainer.steps`' step (forward, backward, Adam
update, state donated); `memory_stats` turns XLA's memory analysis into bytes, with
`peak = argument + temp + output - alias` (per device; deterministic on CPU).
"""
from typing import Callable, Dict, Optional


def memory_stats(compiled) -> Dict[str, int]:
  """XLA's memory analysis of a compiled function, in bytes per device.

  `peak` = argument + temp + output - alias: what the program needs at once (inputs that
  are donated and aliased to outputs counted once).
  """
  m = compiled.memory_analysis()
  stats = {"argument_bytes": int(m.argument_size_in_bytes),
           "output_bytes": int(m.output_size_in_bytes),
           "alias_bytes": int(m.alias_size_in_bytes),
           "temp_bytes": int(m.temp_size_in_bytes)}
  stats["peak_bytes"] = (stats["argument_bytes"] + stats["temp_bytes"] + stats["output_bytes"]
                         - stats["alias_bytes"])
  return stats


def train_batch_shapes(length: int, batch: int = 1):
  """Abstract `{'inputs', 'targets', 'weights'}` `[1, batch, length]` (one micro-batch)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  shape = (1, batch, length)
  return {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32),
          "targets": jax.ShapeDtypeStruct(shape, jnp.int32),
          "weights": jax.ShapeDtypeStruct(shape, jnp.float32)}


TRAIN_STEPS = 1000  # the schedule's length in the benchmarks' train steps


def build_train_step(config, opt_config, length: int, total_steps: int = TRAIN_STEPS):
  """The trainer's (init_state, jitted train step, abstract state) for `config`."""
  from reformer_jax.trainer import optim, sharding, steps  # pylint: disable=import-outside-toplevel
  mesh = sharding.make_mesh()
  tx, _ = optim.make_optimizer(opt_config, total_steps)
  init_state = steps.make_init_state(config, tx, 0, length, mesh)
  return init_state, steps.compile_train_step(config, tx, mesh), steps.abstract_state(
      init_state, mesh)


def compile_train_step(config, opt_config, length: int, batch: int = 1,
                       dump_dir: Optional[str] = None):
  """Compiles one training step (forward, backward, Adam update) for `[batch, length]`.

  Returns:
    (compiled, abstract state). With `dump_dir`, XLA writes the optimised program, its
    buffer assignment and live ranges there (read them with `peak_buffers`).
  """
  _, train_fn, state_shapes = build_train_step(config, opt_config, length)
  options = {"xla_dump_to": dump_dir} if dump_dir else None
  lowered = train_fn.lower(state_shapes, train_batch_shapes(length, batch))
  return lowered.compile(compiler_options=options), state_shapes


def compile_memory(fn: Callable, *args, dump_dir: Optional[str] = None) -> Dict[str, int]:
  """`memory_stats` of `jax.jit(fn)` compiled for abstract `args`."""
  import jax  # pylint: disable=import-outside-toplevel
  options = {"xla_dump_to": dump_dir} if dump_dir else None
  return memory_stats(jax.jit(fn).lower(*args).compile(compiler_options=options))
