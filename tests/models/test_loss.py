"""Tests for reformer_jax.models.loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.models.loss import chunked_cross_entropy


def full_cross_entropy(hidden, kernel, bias, targets, weights):
  """Plain reference: materialises all logits."""
  logits = jnp.einsum("bld,dv->blv", hidden, kernel) + bias[None, None, :]
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return jnp.sum(nll * weights), jnp.sum(weights), jnp.sum(correct * weights)


def _inputs(batch=2, length=37, d=8, vocab=11, seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 5)
  hidden = jax.random.normal(k[0], (batch, length, d))
  kernel = jax.random.normal(k[1], (d, vocab))
  bias = jax.random.normal(k[2], (vocab,))
  targets = jax.random.randint(k[3], (batch, length), 0, vocab)
  weights = jax.random.uniform(k[4], (batch, length))
  return hidden, kernel, bias, targets, weights


@pytest.mark.parametrize("chunk_len", [5, 100])
def test_matches_full_logits_value_and_grad(chunk_len):
  hidden, kernel, bias, targets, weights = _inputs()
  got = chunked_cross_entropy(hidden, kernel, bias, targets, weights, chunk_len)
  want = full_cross_entropy(hidden, kernel, bias, targets, weights)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5)
  assert float(want[2]) > 0  # some predictions are right, so `correct` is really tested

  grad_got = jax.grad(lambda *a: chunked_cross_entropy(*a, targets, weights, chunk_len)[0],
                      argnums=(0, 1, 2))(hidden, kernel, bias)
  grad_want = jax.grad(lambda *a: full_cross_entropy(*a, targets, weights)[0],
                       argnums=(0, 1, 2))(hidden, kernel, bias)
  for g, w in zip(grad_got, grad_want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_correct_is_argmax_with_ties():
  # Integer logits (hidden through an identity kernel) tie often: a target is correct only
  # where it is argmax's first maximum.
  vocab = 6
  hidden = jax.random.randint(jax.random.PRNGKey(3), (2, 200, vocab), 0, 3).astype(jnp.float32)
  targets = jax.random.randint(jax.random.PRNGKey(4), (2, 200), 0, vocab)
  weights = jnp.ones(targets.shape)
  kernel, bias = jnp.eye(vocab), jnp.zeros(vocab)
  logits = hidden
  top = logits.max(-1, keepdims=True)
  tied_target = ((jnp.take_along_axis(logits, targets[..., None], -1) == top)[..., 0]
                 & (jnp.argmax(logits, -1) != targets))
  assert int(tied_target.sum()) > 10  # targets that reach the maximum after an earlier one
  got = chunked_cross_entropy(hidden, kernel, bias, targets, weights, chunk_len=64)
  want = full_cross_entropy(hidden, kernel, bias, targets, weights)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  assert float(got[2]) == float(want[2]) > 0


def test_no_bias_and_default_weights():
  hidden, kernel, _, targets, _ = _inputs(length=12)
  loss, weight, _ = chunked_cross_entropy(hidden, kernel, None, targets, chunk_len=4)
  want = full_cross_entropy(hidden, kernel, jnp.zeros(kernel.shape[1]), targets,
                            jnp.ones(targets.shape))
  np.testing.assert_allclose(loss, want[0], rtol=1e-5)
  assert float(weight) == targets.size


def test_holds_one_chunk_of_logits():
  batch, length, d, vocab, chunk = 1, 4096, 16, 512, 64
  hidden, kernel, bias, targets, weights = _inputs(batch, length, d, vocab)
  grad_fn = jax.jit(jax.grad(
      lambda h, k, b: chunked_cross_entropy(h, k, b, targets, weights, chunk)[0],
      argnums=(0, 1, 2)))
  temp = grad_fn.lower(hidden, kernel, bias).compile().memory_analysis().temp_size_in_bytes
  full_logits = batch * length * vocab * 4
  assert temp < full_logits / 4, (temp, full_logits)


@pytest.mark.parametrize("change", ["hidden", "kernel", "bias", "targets", "weights", "chunk"])
def test_bad_inputs_raise(change):
  hidden, kernel, bias, targets, weights = _inputs(length=6)
  chunk = 4
  if change == "hidden":
    hidden = hidden[0]
  elif change == "kernel":
    kernel = kernel[1:]
  elif change == "bias":
    bias = bias[1:]
  elif change == "targets":
    targets = targets[:, 1:]
  elif change == "weights":
    weights = weights[:1]
  else:
    chunk = 0
  with pytest.raises(ValueError):
    chunked_cross_entropy(hidden, kernel, bias, targets, weights, chunk)
