"""Train state, the jit-compiled train and eval steps, evaluation loop and dry run.

Steps are compiled over the device mesh (`sharding.py`): the batch is split over
data x fsdp, each parameter and its optimiser state placed by the rule table
(`state_shardings`), the train state donated. Random bits come from
`fold_in(state.rng, step)` (`step_keys`), so they do not depend on the devices. The task
(`tasks/`: causal LM by default) supplies the model and its loss sums.
"""
import functools
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from reformer_jax.layers import logical_axes
from reformer_jax.models import ReformerConfig
from reformer_jax.models.config import position_limit
from reformer_jax.parallel import sequence
from reformer_jax.trainer import metrics as metrics_lib
from reformer_jax.trainer import optim, sharding
from reformer_jax.trainer.tasks import CausalLM

CAUSAL_LM = CausalLM()

_SUMS = ("loss", "weight", "correct")


@flax.struct.dataclass
class TrainState:
  """step: int32 []; params; opt_state; rng: uint32 [2], the run's base key."""
  step: jnp.ndarray
  params: Any
  opt_state: Any
  rng: jnp.ndarray


def run_keys(seed: int):
  """(init, train, eval) PRNG keys of a run."""
  return tuple(jax.random.split(jax.random.PRNGKey(seed), 3))


def init_variables(config: ReformerConfig, key, length: Optional[int] = None,
                   task=CAUSAL_LM):
  """{'params', 'params_axes' (their logical axes)} of `task.model(config)` (the
  parameters do not depend on the length; None: the position table's limit)."""
  init_len = 2 * max(config.local_chunk_len, config.lsh_chunk_len)
  init_len = min(init_len, length or position_limit(config) or init_len)
  params_key, hash_key = jax.random.split(key)
  tokens = jnp.zeros((1, init_len), jnp.int32)
  model = task.model(config.replace(deterministic=True))
  with logical_axes.recording():
    return model.init({"params": params_key, "hash": hash_key}, tokens)


def init_params(config: ReformerConfig, key, length: Optional[int] = None, task=CAUSAL_LM):
  """Parameters of `task.model(config)` (see `init_variables`)."""
  return init_variables(config, key, length, task)["params"]


def param_shardings(config: ReformerConfig, mesh: Mesh, task=CAUSAL_LM,
                    rules=sharding.DEFAULT_RULES):
  """The NamedShardings of `task.model(config)`'s parameters on `mesh` by `rules`."""
  variables = jax.eval_shape(lambda: init_variables(config, jax.random.PRNGKey(0), None, task))
  return sharding.param_shardings(variables[logical_axes.COLLECTION], variables["params"],
                                  mesh, rules)


def state_shardings(config: ReformerConfig, tx, mesh: Mesh, task=CAUSAL_LM,
                    rules=sharding.DEFAULT_RULES) -> TrainState:
  """The TrainState's NamedShardings: parameters by `rules`, each optimiser moment like its
  parameter, the rest (step, rng, counters) replicated."""
  params = param_shardings(config, mesh, task, rules)
  shapes = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0), None, task))
  replicated = sharding.replicated(mesh)
  return TrainState(step=replicated, params=params,
                    opt_state=sharding.like_params(jax.eval_shape(tx.init, shapes), shapes,
                                                   params, mesh),
                    rng=replicated)


def make_init_state(config: ReformerConfig, tx, seed: int, length: int, mesh: Mesh,
                    task=CAUSAL_LM, rules=sharding.DEFAULT_RULES):
  """A jitted () -> TrainState, placed on `mesh` by `state_shardings`."""
  init_key, train_key, _ = run_keys(seed)

  def init():
    params = init_params(config, init_key, length, task)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), rng=train_key)

  return jax.jit(init, out_shardings=state_shardings(config, tx, mesh, task, rules))


def abstract_state(init_state, mesh: Mesh):
  """The ShapeDtypeStructs of `init_state()`'s TrainState, with its shardings (replicated
  over `mesh` where it has none)."""
  return _with_shardings(jax.eval_shape(init_state), mesh)


def abstract_params(config: ReformerConfig, length: int, mesh: Mesh, task=CAUSAL_LM,
                    rules=sharding.DEFAULT_RULES):
  """The parameters' ShapeDtypeStructs, placed on `mesh` by `rules`."""
  key = jax.random.PRNGKey(0)
  shapes = jax.eval_shape(lambda: init_params(config, key, length, task))
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes, param_shardings(config, mesh, task, rules))


def _with_shardings(shapes, mesh: Mesh):
  replicated = sharding.replicated(mesh)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=getattr(x, "sharding", None) or replicated),
      shapes)


def step_keys(rng, step):
  """(hash, dropout, task) keys of update `step` from the run's base key `rng`: the three
  of `split(fold_in(rng, step), 3)`, independent of each other. (Under
  `jax_threefry_partitionable`, which the trainer sets, the first two are
  `split(fold_in(rng, step))`: the hash and dropout keys of earlier runs.)"""
  hash_key, dropout_key, task_key = jax.random.split(jax.random.fold_in(rng, step), 3)
  return hash_key, dropout_key, task_key


def train_step(state: TrainState, batch, *, model, tx: optax.GradientTransformation,
               task=CAUSAL_LM, grad_shardings=None):
  """One update from `batch` (the task's arrays, e.g. {'inputs', 'targets', 'weights'}:
  [accum, micro, L]) of `model` = `task.model(config)`.

  Gradients of the summed loss are accumulated over the `accum` micro-batches
  (lax.scan) and divided by the total weight. Every micro-batch uses the
  step's LSH rotations, so without dropout the update equals that of one
  batch of accum * micro examples.

  `grad_shardings`: the parameters' shardings; the summed gradients are constrained to them
  (each device reduces only its part, fsdp).

  A step whose loss or gradient norm is not finite is rejected by the
  optimiser's guard (`optim.make_optimizer`): params and optimiser state stay
  as they were, the step count advances, and its sums and grad_norm are 0.

  Returns:
    (new state, {'loss', 'weight', 'correct' sums, 'grad_norm', 'nonfinite':
    1. for a rejected step, else 0.}).
  """
  hash_key, dropout_key, task_key = step_keys(state.rng, state.step)

  def micro_step(carry, xs):
    index, micro = xs

    def loss_fn(params):
      sums = task.loss_sums(model, params, micro,
                            {"dropout": jax.random.fold_in(dropout_key, index),
                             "hash": hash_key}, jax.random.fold_in(task_key, index))
      return sums["loss"], sums

    grads, sums = jax.grad(loss_fn, has_aux=True)(state.params)
    if grad_shardings is not None:
      grads = jax.lax.with_sharding_constraint(grads, grad_shardings)
    return jax.tree.map(jnp.add, carry, (grads, sums)), None

  zeros = (jax.tree.map(jnp.zeros_like, state.params),
           {k: jnp.zeros((), jnp.float32) for k in _SUMS})
  accum = batch["inputs"].shape[0]
  (grads, sums), _ = jax.lax.scan(micro_step, zeros, (jnp.arange(accum), batch))
  grads = jax.tree.map(lambda g: g / jnp.maximum(sums["weight"], 1.0), grads)
  grad_norm = optax.global_norm(grads)
  # The guard looks at the gradients' elements: a non-finite loss, or a gradient
  # norm beyond the float range (its sum of squares overflows), makes them NaN.
  finite = jnp.isfinite(sums["loss"]) & jnp.isfinite(grad_norm)
  grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.nan), grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1,
                            params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state)
  applied = optim.last_step_applied(opt_state)
  out = dict(sums, grad_norm=grad_norm)
  out = {k: jnp.where(applied, v, 0.) for k, v in out.items()}
  return new_state, dict(out, nonfinite=1. - applied.astype(jnp.float32))


def eval_step(params, batch, key, *, model, task=CAUSAL_LM):
  """(loss sums, per-example outputs) of one batch with a deterministic model."""
  return task.eval_outputs(model, params, batch, key)


def compile_train_step(config: ReformerConfig, tx, mesh: Mesh, task=CAUSAL_LM,
                       rules=sharding.DEFAULT_RULES):
  """jit(train_step): state placed by `state_shardings` and donated, batch split on axis 1."""
  state = state_shardings(config, tx, mesh, task, rules)
  replicated = sharding.replicated(mesh)
  step = functools.partial(train_step, model=sequence.over_mesh(task.model(config), mesh),
                           tx=tx, task=task, grad_shardings=state.params)
  return jax.jit(_batch_split(step, mesh, state.params),
                 in_shardings=(state, batch_sharding(mesh, 1)),
                 out_shardings=(state, replicated), donate_argnums=0)


def compile_eval_step(config: ReformerConfig, mesh: Mesh, task=CAUSAL_LM,
                      rules=sharding.DEFAULT_RULES):
  """jit(eval_step) for `config` made deterministic; parameters placed by `rules`, batch
  split on axis 0."""
  replicated = sharding.replicated(mesh)
  model = sequence.over_mesh(task.model(config.replace(deterministic=True)), mesh)
  return jax.jit(_batch_split(functools.partial(eval_step, model=model, task=task), mesh),
                 in_shardings=(param_shardings(config, mesh, task, rules),
                               batch_sharding(mesh, 0), replicated),
                 out_shardings=replicated)


def batch_sharding(mesh: Mesh, batch_axis: int):
  """The batch split over data x fsdp on `batch_axis`, and over `sequence` on the length
  when that axis has several devices (`parallel.sequence`)."""
  if mesh.shape.get(sequence.AXIS, 1) > 1:
    return sequence.batch_sharding(mesh, batch_axis)
  return sharding.batch_sharding(mesh, batch_axis)


def _batch_split(fn, mesh: Mesh, param_shardings=None):
  """`fn` traced with its layers' activations kept split over the batch and, given the
  parameters' shardings, their gradients placed like them layer by layer
  (`logical_axes.split_batch`). Under sequence parallelism the model runs inside
  `shard_map`, where every slice's place is fixed already: `fn` itself."""
  if mesh.shape.get(sequence.AXIS, 1) > 1:
    return fn

  def traced(*args):
    with logical_axes.split_batch(sharding.batch_sharding(mesh), param_shardings):
      return fn(*args)

  # The program keeps the step's name (jit_train_step in XLA dumps, read by experiments/).
  traced.__name__ = getattr(fn, "func", fn).__name__
  return traced


def split_micro(batch, accum: int):
  """[B, L] host arrays -> [accum, B // accum, L]."""
  return {k: np.reshape(v, (accum, -1) + v.shape[1:]) for k, v in batch.items()}


def evaluate(eval_fn, params, data, *, batch_size: int, seq_len: int,
             n_batches: Optional[int], seed: int, mesh: Mesh,
             split: str = "eval", task=CAUSAL_LM, examples: Optional[list] = None) -> dict:
  """The task's metrics (LM: mean loss, accuracy, bits per byte) over
  `data.eval_batches(...)`.

  The hash key of batch i is fold_in(eval key of `seed`, i): evaluations are
  reproducible. `examples`: a list that receives, per real (weight > 0) example, a dict
  of its targets (`task.targets`) and the eval step's per-example outputs (host arrays).
  """
  eval_key = run_keys(seed)[2]
  placement = batch_sharding(mesh, 0)
  sums = {}
  batches = data.eval_batches(batch_size, seq_len, n_batches, split=split)
  for i, batch in enumerate(batches):
    out, outputs = eval_fn(params, sharding.put(batch, placement),
                           jax.random.fold_in(eval_key, i))
    sums = metrics_lib.add_sums(sums, jax.device_get(out))
    if examples is not None:
      outputs = jax.device_get(outputs)
      for row in np.flatnonzero(batch["weights"] > 0):
        examples.append({**task.targets(batch, row),
                         **{k: v[row] for k, v in outputs.items()}})
  return task.summarize(sums)


def dry_run_report(train_fn, state_shapes, batch_shapes) -> dict:
  """Compiles `train_fn` for the given shapes without running it.

  Returns:
    {'params': parameter count, 'state_bytes_per_device': the train state's bytes on one
    device (its shard of each array), 'peak_bytes': argument + temp + output - alias
    bytes per device, 'flops_per_step': XLA's flop estimate}.
  """
  compiled = train_fn.lower(state_shapes, batch_shapes).compile()
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  n_params = sum(int(np.prod(x.shape)) for x in
                 jax.tree.leaves(state_shapes.params))
  peak = (memory.argument_size_in_bytes + memory.temp_size_in_bytes +
          memory.output_size_in_bytes - memory.alias_size_in_bytes)
  return {"params": n_params,
          "state_bytes_per_device": sharding.bytes_per_device(state_shapes),
          "peak_bytes": int(peak),
          "flops_per_step": float(cost.get("flops", float("nan")))}
