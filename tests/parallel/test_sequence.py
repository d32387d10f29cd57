"""Sequence parallelism on 8 fake CPU devices against one device: loss sums, gradients
(sequence=8, data=2 x sequence=4; bfloat16 streams added to in place), three of the
trainer's steps (fsdp=2 x sequence=2 x tensor=2), the compiled step's collectives and bad
input (one subprocess)."""
import json

import pytest

from tests.parallel.eight_devices import run_on_eight_devices

_SCRIPT = r"""
import functools, json, re
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh
from reformer_jax.layers import xla_cpu
from reformer_jax.models import ReformerConfig, ReformerLM
from reformer_jax.parallel.sequence import SequenceParallel
from reformer_jax.trainer import optim, sharding, steps
import time
jax.config.update("jax_default_matmul_precision", "highest")

DEVICES = np.array(jax.devices())
MESHES = {"sequence=8": (Mesh(DEVICES, ("sequence",)), ()),
          "data=2 x sequence=4": (Mesh(DEVICES.reshape(2, 4), ("data", "sequence")),
                                  ("data",))}
TINY = dict(vocab_size=32, d_model=16, d_ff=32, n_heads=2, d_head=8, n_layers=2,
            lsh_chunk_len=4, local_chunk_len=4, dropout_rate=0., attention_dropout=0.,
            axial_shape=(8, 16), axial_dims=(4, 12), deterministic=True)
rng = np.random.default_rng(0)
out = {}


def relative(a, b):  # in NumPy: no compile per leaf shape
  a, b = np.asarray(a), np.asarray(b)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def init(config, tokens):  # one compile, not one per operation
  return jax.jit(ReformerLM(config).init)(
      {"params": jax.random.PRNGKey(0), "hash": jax.random.PRNGKey(1)}, tokens)["params"]


# The cases' settings (rounds, causality, windows) have no parameters: one set for all.
PARAMS = init(ReformerConfig(attention_types=("local", "lsh"), **TINY),
              jnp.zeros((2, 16), jnp.int32))


def compare(name, config, mesh_name, length, lengths):
  tokens = jnp.asarray(rng.integers(0, 32, (2, length)), jnp.int32)
  mask = jnp.asarray(np.arange(length)[None] < np.asarray(lengths)[:, None])
  model = ReformerLM(config)
  mesh, batch_axes = MESHES[mesh_name]
  parallel = SequenceParallel(model, mesh, batch_axes=batch_axes)
  padded = -(-length // parallel.multiple()) * parallel.multiple()
  pad = lambda t: jnp.pad(t, ((0, 0), (0, padded - length)))
  rngs = {"hash": jax.random.PRNGKey(2)}
  def loss(m, tokens, mask, p):
    sums = m.apply({"params": p}, tokens, mask, targets=tokens, rngs=rngs)
    return sums["loss"], sums
  grad = lambda *a: jax.jit(jax.grad(functools.partial(loss, *a), has_aux=True))(PARAMS)
  (g1, s1), (g2, s2) = grad(model, pad(tokens), pad(mask)), grad(parallel, tokens, mask)
  out[name] = {"mesh": mesh_name, "loss": relative(s2["loss"], s1["loss"]),
               "weight": [float(s1["weight"]), float(s2["weight"])],
               "grads": max(jax.tree.leaves(jax.tree.map(relative, g2, g1)))}


compare("mix, lsh 1 round strict", ReformerConfig(attention_types=("local", "lsh"), **TINY),
        "data=2 x sequence=4", 64, [64, 50])
compare("mix, lsh 4 rounds strict, duplicates", ReformerConfig(
    attention_types=("local", "lsh"), n_hashes=4, correct_duplicates=True, **TINY),
    "data=2 x sequence=4", 64, [64, 64])
compare("encoder, padding, lsh 2 rounds HF windows, duplicates", ReformerConfig(
    attention_types=("local", "lsh"), causal=False, local_wrap=True, n_hashes=2,
    correct_duplicates=True, lsh_n_chunks_after=1, local_n_chunks_after=1, **TINY),
    "sequence=8", 60, [60, 41])

# bfloat16 streams on slices, added to in place as for a TPU (the CPU's default is float32
# accumulation), against float32 streams on one device: bfloat16's rounding, no more.
tokens = jnp.asarray(rng.integers(0, 32, (2, 64)), jnp.int32)
def loss_and_grads(model, **forced):
  def loss(p):
    sums = model.apply({"params": p}, tokens, targets=tokens,
                       rngs={"hash": jax.random.PRNGKey(2)})
    return sums["loss"] / sums["weight"]
  with xla_cpu.forced(**forced):
    return jax.jit(jax.value_and_grad(loss))(PARAMS)
config = ReformerConfig(attention_types=("local", "lsh"), **TINY)
l1, g1 = loss_and_grads(ReformerLM(config))
l2, g2 = loss_and_grads(SequenceParallel(ReformerLM(config.replace(stream_dtype="bfloat16")),
                                         MESHES["sequence=8"][0]), float32_accumulation=False)
out["bfloat16 in place"] = {"loss": relative(l2, l1), "grads": float(np.mean(
    jax.tree.leaves(jax.tree.map(relative, g2, g1))))}
print("cases", time.process_time(), flush=True)

# Three training steps of the trainer's step (causal LSH, 1 round, HF windows), and the
# collectives of its compiled program.
config = ReformerConfig(attention_types=("local", "lsh"), strict_causal=False, **dict(TINY, d_model=32,
                        axial_shape=(16, 16), axial_dims=(8, 24)))
model = ReformerLM(config)
tx, _ = optim.make_optimizer(optim.OptimizerConfig(learning_rate=1e-2, schedule="constant",
                                                   warmup_steps=0), 3)
length = 256
batch = {"inputs": jnp.asarray(rng.integers(0, 32, (1, 2, length)), jnp.int32),
         "weights": jnp.ones((1, 2, length), jnp.float32)}
batch["targets"] = batch["inputs"]
params = init(config, batch["inputs"][0, :, :16])
state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                         opt_state=tx.init(params), rng=jax.random.PRNGKey(3))
states, losses = {}, {}
one_step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx)).lower(state, batch)
# The trainer's own step on MeshConfig(fsdp=2, sequence=2, tensor=2): wrapped in
# SequenceParallel, the parameters sharded by the mesh's rules.
mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=2, sequence=2, tensor=2))
parallel_step = steps.compile_train_step(config, tx, mesh).lower(
    steps.abstract_state(steps.make_init_state(config, tx, 0, length, mesh), mesh),
    jax.eval_shape(lambda: batch))
placed = {"one": (state, batch),
          "parallel": (jax.device_put(state, steps.state_shardings(config, tx, mesh)),
                       jax.device_put(batch, steps.batch_sharding(mesh, 1)))}
for name, step in (("one", one_step.compile()), ("parallel", parallel_step.compile())):
  (s, b), losses[name] = placed[name], []
  for _ in range(3):
    s, metrics = step(s, b)
    losses[name].append(float(metrics["loss"]))
  states[name] = s
out["steps"] = {"losses": losses, "params": max(jax.tree.leaves(jax.tree.map(
    relative, states["parallel"].params, states["one"].params)))}
print("steps", time.process_time(), flush=True)
hlo = step.as_text()
largest = {}
for line in hlo.splitlines():
  op = re.search(r"\b(all-gather|all-to-all|collective-permute|all-reduce|reduce-scatter)"
                 r"(-start)?\(", line)
  if op:
    sizes = [int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
             for dims in re.findall(r"[a-z]+\d*\[([\d,]*)\]", line)]
    largest[op.group(1)] = max(largest.get(op.group(1), 0), max(sizes))
out["collectives"] = {"largest": largest, "sequence_size": length * config.d_model}

# Bad input: one clear line each.
errors = []
for bad in (lambda: SequenceParallel(ReformerLM(config.replace(attention_types=("full",))),
                                     mesh).apply({"params": params}, batch["inputs"][0],
                                                 targets=batch["inputs"][0]),
            lambda: SequenceParallel(model, mesh).apply({"params": params},
                                                        jnp.zeros((1, 257), jnp.int32),
                                                        targets=jnp.zeros((1, 257), jnp.int32))):
  try:
    bad()
    errors.append(None)
  except ValueError as e:
    errors.append(str(e))
out["errors"] = errors
print("RESULT", json.dumps(out))
"""


@pytest.fixture(scope="module")
def results():
  stdout = run_on_eight_devices(_SCRIPT)
  print(stdout.split("RESULT", 1)[0])
  return json.loads(stdout.split("RESULT", 1)[1])


@pytest.mark.parametrize("case", ["mix, lsh 1 round strict",
                                  "mix, lsh 4 rounds strict, duplicates",
                                  "encoder, padding, lsh 2 rounds HF windows, duplicates"])
def test_loss_and_gradients_equal_one_device(results, case):
  got = results[case]
  assert got["weight"][0] == got["weight"][1] > 0
  assert got["loss"] < 1e-5, got
  assert got["grads"] < 1e-4, got


def test_bfloat16_streams_added_in_place_on_slices(results):
  """The mean over parameters of the gradients' relative error to float32 streams: 7.2%
  (one device's bfloat16 streams: 6.8%; the slices with float32 accumulation: 7.0%); a
  lost or doubled addition gives O(1)."""
  got = results["bfloat16 in place"]
  assert got["loss"] < 1e-2 and got["grads"] < 0.1, got


def test_three_training_steps_equal_one_device(results):
  got = results["steps"]
  assert got["losses"]["parallel"] == pytest.approx(got["losses"]["one"], rel=1e-5)
  assert got["losses"]["one"][2] < got["losses"]["one"][0]  # the steps did train
  # Adam divides each update by the root of its second moment, so an element whose gradient
  # is near zero moves by up to the learning rate (1e-2) whatever its gradient's rounding:
  # three steps' parameters differ more than one step's gradients. Measured 1.5e-4 and
  # 1.7e-4 of a leaf's largest value in two runs on one machine (XLA:CPU's threads vary
  # it), below 1e-4 in earlier CI runs; the losses above are the tight check.
  assert got["params"] < 1e-3


def test_no_collective_moves_a_sequence_sized_array(results):
  got = results["collectives"]
  assert {"all-to-all", "collective-permute", "all-gather"} <= set(got["largest"]), got
  assert max(got["largest"].values()) < got["sequence_size"], got


def test_bad_input_gets_one_clear_line(results):
  full, positions = results["errors"]
  assert "cannot run on slices of it (sequence axis 'sequence')" in full
  assert "padded to 264 positions" in positions and "position table covers 256" in positions
