"""The train step's guard against non-finite losses and gradients."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.models import ReformerConfig, ReformerLM
from reformer_jax.trainer import optim, sharding, steps
from reformer_jax.trainer.tasks import CausalLM

CONFIG = ReformerConfig(vocab_size=16, d_model=16, d_ff=32, n_heads=2, d_head=8, n_layers=1,
                        attention_types=("local",), local_chunk_len=4, positional="none")


@pytest.fixture(scope="module")
def step_fn():
  mesh = sharding.make_mesh()
  tx, _ = optim.make_optimizer(optim.OptimizerConfig(learning_rate=1e-2, warmup_steps=0), 10)
  init = steps.make_init_state(CONFIG, tx, 0, 8, mesh)
  return init, steps.compile_train_step(CONFIG, tx, mesh)


def _batch(seed, weight=1.0):
  tokens = np.random.default_rng(seed).integers(0, 16, (1, 2, 9))
  return {"inputs": tokens[..., :-1].astype(np.int32),
          "targets": tokens[..., 1:].astype(np.int32),
          "weights": np.full((1, 2, 8), weight, np.float32)}


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("poison", [np.nan, np.inf])
def test_a_non_finite_step_changes_neither_params_nor_optimiser_state(step_fn, poison):
  init, train_fn = step_fn
  state, _ = train_fn(init(), _batch(0))             # one good step: Adam moments non-zero
  before = jax.device_get(state)
  state, out = train_fn(state, _batch(1, weight=poison))
  after = jax.device_get(state)
  assert int(after.step) == 2
  for got, want in zip(_leaves(after.params), _leaves(before.params)):
    np.testing.assert_array_equal(got, want)
  for got, want in zip(_leaves(optim.unguarded(after.opt_state)),
                       _leaves(optim.unguarded(before.opt_state))):
    np.testing.assert_array_equal(got, want)
  assert [int(c) for c in optim.nonfinite_counts(after.opt_state)] == [1, 1]
  out = jax.device_get(out)
  assert float(out["nonfinite"]) == 1.0
  assert all(float(out[k]) == 0.0 for k in ("loss", "weight", "correct", "grad_norm"))
  # The next finite step is applied again and ends the run of non-finite ones.
  state, out = train_fn(state, _batch(2))
  assert [int(c) for c in optim.nonfinite_counts(state.opt_state)] == [0, 1]
  assert float(out["nonfinite"]) == 0.0 and np.isfinite(float(out["loss"]))
  assert any(np.any(a != b) for a, b in zip(_leaves(state.params), _leaves(before.params)))


def test_a_finite_step_is_the_unguarded_optimisers_update(step_fn):
  init, train_fn = step_fn
  state = init()
  tx, _ = optim.make_optimizer(optim.OptimizerConfig(learning_rate=1e-2, warmup_steps=0), 10)
  inner = optim.unguarded(state.opt_state)
  batch = _batch(3)
  new_state, _ = train_fn(init(), batch)
  # The same update by hand from the gradients of the summed loss / weight.
  model = ReformerLM(CONFIG)
  hash_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, 0))

  def loss(params):
    sums = model.apply({"params": params}, batch["inputs"][0], targets=batch["targets"][0],
                       weights=batch["weights"][0],
                       rngs={"dropout": jax.random.fold_in(dropout_key, 0), "hash": hash_key})
    return sums["loss"] / sums["weight"]

  @jax.jit
  def by_hand(params):
    updates, _ = tx.update(jax.grad(loss)(params), optim.guard(inner), params)
    return jax.tree.map(lambda p, u: p + u, params, updates)

  want = by_hand(state.params)
  for got, expected in zip(_leaves(new_state.params), _leaves(want)):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)



class _KeyProbe(CausalLM):
  """A task whose loss sums report whether its own key equals the dropout key ('correct')
  or the hash key ('weight' - 1)."""

  def loss_sums(self, model, params, batch, rngs, key):
    def same(other):
      return jnp.all(jax.random.bits(other, (4,)) == jax.random.bits(key, (4,)))
    return {"loss": jnp.sum(params["w"] ** 2), "weight": 1. + same(rngs["hash"]),
            "correct": same(rngs["dropout"]) * 1.}


def test_the_task_key_is_neither_the_dropout_nor_the_hash_key():
  # It was once fold_in(step_key, 1), which is the dropout key split(step_key)[1] under
  # jax_threefry_partitionable (set by the trainer and by conftest): MaskedLM's masking
  # drew the same bits as dropout.
  assert jax.config.jax_threefry_partitionable
  tx, _ = optim.make_optimizer(optim.OptimizerConfig(), 10)
  params = {"w": jnp.ones(2)}
  state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=tx.init(params), rng=jax.random.PRNGKey(0))
  train = jax.jit(functools.partial(steps.train_step, model=None, tx=tx, task=_KeyProbe()))
  _, out = train(state, {"inputs": np.zeros((2, 1, 4), np.int32)})  # 2 micro-batches
  assert float(out["correct"]) == 0. and float(out["weight"]) == 2.


def test_step_keys_are_distinct_and_keep_the_earlier_hash_and_dropout_keys():
  rng = jax.random.PRNGKey(7)
  keys = [np.asarray(k) for k in steps.step_keys(rng, 3)]
  assert len({k.tobytes() for k in keys}) == 3
  np.testing.assert_array_equal(np.stack(keys[:2]),
                                jax.random.split(jax.random.fold_in(rng, 3)))
