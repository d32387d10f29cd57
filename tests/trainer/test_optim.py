"""Learning-rate schedules and optimisers against closed forms."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
