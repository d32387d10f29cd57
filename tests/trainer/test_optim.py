"""Learning-rate schedules and optimisers against closed forms."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reformer_jax.trainer import optim
from reformer_jax.trainer.optim import OptimizerConfig, make_optimizer, make_schedule


def _lr(config, step, total=100):
  return float(make_schedule(config, total)(step))


def test_rsqrt_is_trax_linear_warmup_times_rsqrt_decay():
  config = OptimizerConfig(learning_rate=0.01, schedule="rsqrt", warmup_steps=10)
  for step in (0, 4, 9, 10, 39, 99):
    n = step + 1   # updates done after this one
    want = 0.01 * min(1., n / 10) * math.sqrt(10 / max(n, 10))
    assert _lr(config, step) == pytest.approx(want, rel=1e-6)
  assert _lr(config, 39) == pytest.approx(0.005, rel=1e-6)   # rsqrt(40 / 10) = 1/2


def test_cosine_warms_up_then_decays_to_zero_at_the_last_step():
  config = OptimizerConfig(learning_rate=0.02, schedule="cosine", warmup_steps=10)
  assert _lr(config, 4) == pytest.approx(0.01, rel=1e-6)
  assert _lr(config, 10) == pytest.approx(0.02, rel=1e-6)
  assert _lr(config, 55) == pytest.approx(0.01, rel=1e-6)    # half-way: cos = 0
  assert _lr(config, 100) == pytest.approx(0., abs=1e-9)


def test_constant_after_warmup():
  config = OptimizerConfig(learning_rate=0.5, schedule="constant", warmup_steps=4)
  assert [_lr(config, s) for s in (0, 3, 50)] == pytest.approx([0.125, 0.5, 0.5])


def _first_update(**kwargs):
  config = OptimizerConfig(learning_rate=0.1, schedule="constant",
                           warmup_steps=0, **kwargs)
  tx, _ = make_optimizer(config, 10)
  params = {"w": jnp.full((4, 4), 3.0)}
  grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)   # 6 each: norm 24
  return np.asarray(tx.update(grads, tx.init(params), params)[0]["w"])


@pytest.mark.parametrize("name", ["adam", "adafactor"])
def test_optimizers_step_downhill(name):
  assert np.all(_first_update(name=name) < 0)


def test_gradients_are_clipped_to_clip_norm():
  # With a huge eps Adam's first update is -lr * g / eps: linear in g.
  clipped = _first_update(eps=1e6, clip_norm=1.0)
  unclipped = _first_update(eps=1e6, clip_norm=None)
  np.testing.assert_allclose(clipped, unclipped / 24, rtol=1e-5)


def test_bad_names_are_rejected_with_the_choices():
  with pytest.raises(ValueError, match="adafactor"):
    OptimizerConfig(name="sgd")
  with pytest.raises(ValueError, match="cosine"):
    OptimizerConfig(schedule="linear")


PARAMS = {"dense": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 2.0)},
          "norm": {"scale": jnp.full((3,), 2.0), "bias": jnp.full((3,), 2.0)},
          "embed": {"embedding": jnp.full((4, 2), 2.0)}}


def _decay_config(**kwargs):
  return OptimizerConfig(learning_rate=0.1, schedule="constant", warmup_steps=0,
                         weight_decay=0.5, clip_norm=None, **kwargs)


def test_biases_and_layernorm_scales_are_not_decayed_kernels_and_embeddings_are():
  tx, _ = make_optimizer(_decay_config(), 10)
  zeros = jax.tree.map(jnp.zeros_like, PARAMS)    # Adam's update of a zero gradient is 0
  updates = tx.update(zeros, tx.init(PARAMS), PARAMS)[0]
  for path in (("dense", "kernel"), ("embed", "embedding")):
    np.testing.assert_allclose(updates[path[0]][path[1]], -0.1 * 0.5 * 2.0, rtol=1e-6)
  for path in (("dense", "bias"), ("norm", "scale"), ("norm", "bias")):
    np.testing.assert_array_equal(updates[path[0]][path[1]], 0.0)
  tx, _ = make_optimizer(_decay_config(no_decay=("bias", "scale", "embedding")), 10)
  assert np.all(np.asarray(tx.update(zeros, tx.init(PARAMS), PARAMS)[0]["embed"]
                           ["embedding"]) == 0.0)


def test_masked_decay_is_optax_adamw_with_the_mask_and_keeps_its_state_layout():
  config = _decay_config()
  tx, _ = make_optimizer(config, 10)
  mask = optim.decay_mask(PARAMS, config.no_decay)
  want_tx = optax.adamw(0.1, b1=config.b1, b2=config.b2, eps=config.eps,
                        weight_decay=0.5, mask=mask)
  grads = jax.tree.map(lambda p: jnp.linspace(-1., 1., p.size).reshape(p.shape), PARAMS)
  state, want_state = tx.init(PARAMS), want_tx.init(PARAMS)
  for _ in range(2):
    got, state = tx.update(grads, state, PARAMS)
    want, want_state = want_tx.update(grads, want_state, PARAMS)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got,
                 want)
  # Checkpoints of the unmasked AdamW (before the mask) have the same state tree.
  unmasked = optax.adamw(make_schedule(config, 10), weight_decay=0.5).init(PARAMS)
  assert (jax.tree.structure(optim.unguarded(tx.init(PARAMS)))
          == jax.tree.structure(unmasked))


def test_a_single_name_for_no_decay_is_refused_with_the_tuple_form():
  with pytest.raises(ValueError, match=r"\('bias',\)"):
    OptimizerConfig(no_decay="bias")
