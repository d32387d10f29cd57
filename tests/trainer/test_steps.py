"""The train step's guard against non-finite losses and gradients."""
import jax
import numpy as np
import pytest

from reformer_jax.models import ReformerConfig, ReformerLM
from reformer_jax.trainer import optim, sharding, steps

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
