"""Logical axis names recorded beside the parameters at init, and nowhere else."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from reformer_jax.layers import logical_axes
from reformer_jax.layers.dense import DenseParams, LayerNormParams
from reformer_jax.layers.reversible import ReversibleStack


class _Block(nn.Module):
  @nn.compact
  def __call__(self, x, aux, layer_aux, deterministic=True):
    kernel, bias = DenseParams(x.shape[-1], x.shape[-1], (logical_axes.EMBED, logical_axes.MLP),
                               name="dense")()
    return x @ kernel + bias[None, None]


def test_init_records_the_axes_beside_the_parameters_and_apply_ignores_them():
  module = LayerNormParams(4)
  assert set(module.init(jax.random.PRNGKey(0))) == {"params"}  # only when recording
  with logical_axes.recording():
    variables = module.init(jax.random.PRNGKey(0))
  assert variables[logical_axes.COLLECTION] == {
      "scale": logical_axes.AxisMetadata(("norm",)), "bias": logical_axes.AxisMetadata(("norm",))}
  _, state = module.apply({"params": variables["params"]}, mutable=["cache"])  # as decoding
  assert state == {}


def test_the_reversible_stack_keeps_its_blocks_axes_under_each_layer():
  stack = ReversibleStack(((_Block(), _Block()),) * 2)
  x = jnp.zeros((1, 3, 4))
  with logical_axes.recording():
    variables = jax.eval_shape(lambda: stack.init(jax.random.PRNGKey(0), x, x,
                                                  deterministic=True))
  axes = variables[logical_axes.COLLECTION]
  assert axes["layer_1"]["feed_forward"]["dense"] == {
      "kernel": logical_axes.AxisMetadata(("embed", "mlp")),
      "bias": logical_axes.AxisMetadata(("mlp",))}


def test_an_unknown_logical_axis_is_refused():
  with pytest.raises(ValueError, match=r"unknown logical axes \['model'\]"):
    with logical_axes.recording():
      DenseParams(2, 2, ("embed", "model")).init(jax.random.PRNGKey(0))


def test_constrain_batch_applies_only_inside_split_batch(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.lax, "with_sharding_constraint", lambda x, s: calls.append(s) or x)
  split = jax.sharding.NamedSharding(jax.sharding.Mesh(jax.devices()[:1], ("data",)),
                                     jax.sharding.PartitionSpec("data"))
  x = jnp.ones((2, 3))
  assert logical_axes.constrain_batch(x) is x and not calls
  with logical_axes.split_batch(split):
    logical_axes.constrain_batch(x)
  logical_axes.constrain_batch(x)
  assert calls == [split]
