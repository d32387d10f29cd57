"""Softmax over the last axis, written for XLA:CPU's kernels.

XLA:CPU splits a row reduction into a reduce-window and a reduce, which is slow for the
short rows of chunked attention (a query's window of 128 keys). Here row maxima are a
halving tree of elementwise maxima and row sums products with a vector of ones, and the
gradient is written out so that its row sums are products too: one attention step's
softmax with its logsumexp, forward and backward, takes about half the time of
`jax.nn.logsumexp` and `exp` (`python -m experiments.row_reductions`). They are kept on
every platform (`xla_cpu.kept`): the TPU compiler plans the same memory either way, and its
plain-reduction form of the bfloat16 step crashes libtpu 0.0.42's compiler.
"""
from typing import Tuple

import jax
import jax.numpy as jnp

from reformer_jax.layers import xla_cpu

# Rows are halved with elementwise maxima down to at most this width, then reduced.
_TREE_WIDTH = 8


def row_max(x: jnp.ndarray) -> jnp.ndarray:
  """`max(x, axis=-1, keepdims=True)` `[..., n]` -> `[..., 1]`, without a gradient."""
  x = jax.lax.stop_gradient(x)
  return _halving_max(x) if xla_cpu.kept("row_reductions") else _plain_max(x)


def _plain_max(x):
  return jnp.max(x, axis=-1, keepdims=True)


def _halving_max(x):
  while x.shape[-1] > _TREE_WIDTH and x.shape[-1] % 2 == 0:
    half = x.shape[-1] // 2
    x = jnp.maximum(x[..., :half], x[..., half:])
  return jnp.max(x, axis=-1, keepdims=True)


def row_sum(x: jnp.ndarray) -> jnp.ndarray:
  """`sum(x, axis=-1, keepdims=True)` of float32 `[..., n]` as a product with ones."""
  return _product_sum(x) if xla_cpu.kept("row_reductions") else _plain_sum(x)


def _plain_sum(x):
  return jnp.sum(x, axis=-1, keepdims=True)


def _product_sum(x):
  ones = jnp.ones((x.shape[-1], 1), x.dtype)
  return jnp.dot(x, ones, precision=jax.lax.Precision.HIGHEST)


@jax.custom_vjp
def softmax_lse(logits: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Softmax over the last axis and its logsumexp.

  Args:
    logits: float32 `[..., n]`.

  Returns:
    `(probs [..., n], lse [...])`, both float32. `probs` is normalised by the sum of the
    exponentials, not by `exp(-lse)`, so it sums to one even where `lse` rounds.
  """
  return _softmax_lse(logits)[0]


def _softmax_lse(logits):
  top = row_max(logits)
  unnormalised = jnp.exp(logits - top)
  total = row_sum(unnormalised)
  probs = unnormalised / total
  return (probs, (top + jnp.log(total))[..., 0]), probs


def _softmax_lse_fwd(logits):
  return _softmax_lse(logits)


def _softmax_lse_bwd(probs, cotangents):
  d_probs, d_lse = cotangents
  # d logits = probs * (d_probs - <d_probs, probs> + d_lse), per row.
  return (probs * (d_probs - row_sum(d_probs * probs) + d_lse[..., None]),)


softmax_lse.defvjp(_softmax_lse_fwd, _softmax_lse_bwd)
