"""Run by tests/trainer/test_sharding.py in a process of its own with 8 CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8 set before JAX starts); prints one JSON
line of what it measured.

Tiny models give their loss and gradients on one device and under meshes, on the same batch
and rotations: the LM (a local and an LSH layer) under fsdp=8 (with the partitioner's and
with explicit parameter gathers), a masked-LM encoder (the same
layers) under the mesh that uses data, fsdp and tensor (each compile costs seconds of CPU;
data=8 alone is tested by tests/test_train.py); the LM trains two steps under fsdp=8, is
saved, resumed under data=2 x tensor=4 and trains a third: compared with the uninterrupted
third step.
"""
import json
import sys
import time

import jax
import numpy as np

from reformer_jax.layers import logical_axes, xla_cpu
from reformer_jax.models import ReformerConfig
from reformer_jax.trainer import checkpointing, optim, sharding, steps, tasks

ALL_AXES = "data=2 x fsdp=2 x tensor=2"
# fsdp=8 with the blocks gathering their parameters explicitly, as programs for a TPU do
# (on a CPU the partitioner places the gathers: xla_cpu's 'partitioner_gathers').
EXPLICIT = "fsdp=8, explicit gathers"
MESHES = {"fsdp=8": dict(data=1, fsdp=8), EXPLICIT: dict(data=1, fsdp=8),
          ALL_AXES: dict(data=2, fsdp=2, tensor=2)}
LENGTH, BATCH = 16, 8
BASE = ReformerConfig(vocab_size=16, d_model=16, d_ff=32, n_heads=4, d_head=4, n_layers=2,
                      local_chunk_len=4, lsh_chunk_len=4, n_buckets=4, positional="axial",
                      axial_shape=(4, 4), axial_dims=(8, 8), dropout_rate=0.,
                      deterministic=True)
MODELS = {
    "lm": (tasks.CausalLM(), BASE.replace(attention_types=("local", "lsh"))),
    "encoder": (tasks.MaskedLM(), BASE.replace(attention_types=("local", "lsh"), causal=False,
                                               n_hashes=2)),
}


def mesh_of(sizes):
  return sharding.make_mesh(sharding.MeshConfig(**sizes))


def batch_of(seed, leading=()):
  tokens = np.random.default_rng(seed).integers(0, 15, leading + (BATCH, LENGTH + 1))
  return {"inputs": tokens[..., :-1].astype(np.int32),
          "targets": tokens[..., 1:].astype(np.int32),
          "weights": np.ones(leading + (BATCH, LENGTH), np.float32)}


def relative(got, want) -> float:
  """max |got - want| / max |want| over the leaves of two trees."""
  pairs = [(np.asarray(g, np.float64), np.asarray(w, np.float64)) for g, w in
           zip(jax.tree.leaves(jax.device_get(got)), jax.tree.leaves(jax.device_get(want)))]
  return max(float(np.max(np.abs(g - w)) / max(np.max(np.abs(w)), 1e-30)) for g, w in pairs)


def loss_and_grads(task, config, mesh):
  """A jitted (params, batch) -> (loss, grads), parameters placed by the default rules; on
  several devices traced as the train step is (`logical_axes.split_batch`: activations
  split over the batch, each reversible block's gradients placed like its parameters)."""
  model = task.model(config)
  keys = {"hash": jax.random.PRNGKey(7)}
  shardings = steps.param_shardings(config, mesh, task)

  def fn(params, batch):
    loss = lambda p: task.loss_sums(model, p, batch, keys, jax.random.PRNGKey(8))["loss"]
    if mesh.size == 1:
      return jax.value_and_grad(loss)(params)
    with logical_axes.split_batch(sharding.batch_sharding(mesh), shardings):
      return jax.value_and_grad(loss)(params)

  return jax.jit(fn, in_shardings=(shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(sharding.replicated(mesh), shardings))


def gradients():
  """{model: {mesh: [loss rel. error, grads rel. error, state fraction]}}."""
  one = sharding.make_mesh(sharding.MeshConfig(), jax.devices()[:1])
  batch = batch_of(0)
  out = {}
  for name, (task, config) in MODELS.items():
    # jitted: one compile, not one per operation
    params = jax.jit(lambda key: steps.init_params(config, key, LENGTH, task))(
        jax.random.PRNGKey(1))
    want_loss, want_grads = loss_and_grads(task, config, one)(params, batch)
    out[name] = {}
    for mesh_name in ("fsdp=8", EXPLICIT) if name == "lm" else (ALL_AXES,):
      mesh = mesh_of(MESHES[mesh_name])
      placed = sharding.put(params, steps.param_shardings(config, mesh, task))
      with xla_cpu.forced(partitioner_gathers=mesh_name != EXPLICIT):
        loss, grads = loss_and_grads(task, config, mesh)(placed, sharding.put(
            batch, sharding.batch_sharding(mesh)))
      out[name][mesh_name] = [relative(loss, want_loss), relative(grads, want_grads),
                              sharding.bytes_per_device(placed) /
                              sharding.bytes_per_device(jax.device_put(params))]
  return out


def trainer(mesh, tx, config):
  init = steps.make_init_state(config, tx, 0, LENGTH, mesh)
  return init, steps.compile_train_step(config, tx, mesh)


def train(state, train_fn, mesh, first, last):
  losses = []
  for step in range(first, last):
    state, out = train_fn(state, sharding.put(batch_of(step, (1,)),
                                              steps.batch_sharding(mesh, 1)))
    losses.append(float(out["loss"]))
  return state, losses


def training(workdir):
  """Two steps under fsdp=8, saved; a third step uninterrupted, and one resumed from the
  checkpoint under data=2 x tensor=4."""
  _, config = MODELS["lm"]
  tx, _ = optim.make_optimizer(optim.OptimizerConfig(learning_rate=1e-2, warmup_steps=0), 3)
  saving = mesh_of(dict(data=1, fsdp=8))
  init_s, train_s = trainer(saving, tx, config)
  state, first_losses = train(init_s(), train_s, saving, 0, 2)
  checkpointer = checkpointing.Checkpointer(workdir)
  checkpointer.save(state, force=True)
  checkpointer.close()
  want, want_losses = train(state, train_s, saving, 2, 3)
  resuming = mesh_of(dict(data=2, tensor=4))
  init_r, train_r = trainer(resuming, tx, config)
  shapes = steps.abstract_state(init_r, resuming)
  checkpointer = checkpointing.Checkpointer(workdir)
  restored = checkpointer.restore(shapes)
  checkpointer.close()
  placed = [str(x.sharding.spec) for x in jax.tree.leaves(restored.params)]
  wanted = [str(x.sharding.spec) for x in jax.tree.leaves(shapes.params)]
  resumed, last_losses = train(restored, train_r, resuming, 2, 3)
  return {"resume": {"step": int(resumed.step), "sharded_as_asked": placed == wanted,
                     "tensor_sharded": sum("tensor" in p for p in placed),
                     "losses": relative(np.array(last_losses), np.array(want_losses)),
                     "params": relative(resumed.params, want.params),
                     "opt_state": relative(resumed.opt_state, want.opt_state)}}


def main():
  jax.config.update("jax_threefry_partitionable", True)
  assert jax.device_count() == 8, jax.devices()
  out = {"gradients": gradients(), **training(sys.argv[1])}
  print(json.dumps(dict(out, cpu_seconds=time.process_time())))


if __name__ == "__main__":
  main()
