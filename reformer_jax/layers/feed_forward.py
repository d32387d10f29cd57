"""Position-wise feed-forward, optionally chunked over positions.

Hugging Face order: `wi -> dropout -> activation -> wo -> dropout`. When chunked, the
positions are split into chunks processed one at a time by `lax.map`, each under
`jax.checkpoint`, so only one chunk's `[.., chunk_size, d_ff]` activation is alive in the
forward pass and in the backward pass (it is recomputed there). Being per-position, the
chunked result equals the unchunked one; lengths that are not a multiple of `chunk_size`
are padded and sliced back.
"""
import functools
from typing import Callable, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax.layers.chunking import pad_axis, pad_length, split_chunks
from reformer_jax.layers.full_attention import dropout

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # HF "gelu" is the erf form.
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_approx": functools.partial(jax.nn.gelu, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def get_activation(activation: Union[str, Callable]) -> Callable:
  """Activation function by name (see `ACTIVATIONS`) or the callable itself."""
  if callable(activation):
    return activation
  if activation not in ACTIVATIONS:
    raise ValueError(f"unknown activation {activation!r}; use one of {sorted(ACTIVATIONS)} "
                     "or pass a callable")
  return ACTIVATIONS[activation]


class _DenseParams(nn.Module):
  """Creates the `kernel [d_in, d_out]` and `bias [d_out]` of a dense layer; returns them."""
  d_in: int
  d_out: int

  @nn.compact
  def __call__(self):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (self.d_in, self.d_out))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.d_out,))
    return kernel, bias


def _dense(x, kernel, bias):
  kernel, bias = kernel.astype(x.dtype), bias.astype(x.dtype)
  return jnp.einsum("...i,io->...o", x, kernel) + bias.reshape((1,) * (x.ndim - 1) + (-1,))


def feed_forward(x: jnp.ndarray, wi, wo, activation: Callable, dropout_rate: float = 0.,
                 rng: Optional[jax.Array] = None) -> jnp.ndarray:
  """`wo(dropout(act(dropout(wi(x)))))` -> dropout; `wi`, `wo` are (kernel, bias) pairs.

  `x`: `[..., d_model]` -> `[..., d_model]`. `rng` None disables dropout.
  """
  rng_hidden = rng_out = None
  if rng is not None:
    rng_hidden, rng_out = jax.random.split(rng)
  h = dropout(_dense(x, *wi), dropout_rate, rng_hidden)
  h = activation(h)
  return dropout(_dense(h, *wo), dropout_rate, rng_out)


def chunked_feed_forward(x: jnp.ndarray, wi, wo, activation: Callable, chunk_size: int,
                         dropout_rate: float = 0., rng: Optional[jax.Array] = None
                         ) -> jnp.ndarray:
  """`feed_forward` over chunks of `chunk_size` positions, one chunk alive at a time.

  `x`: `[batch, length, d_model]` -> `[batch, length, d_model]`. Chunk i's dropout uses
  `fold_in(rng, i)`.
  """
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1 (or None for no chunking), got {chunk_size}")
  length = x.shape[1]
  chunk_size = min(chunk_size, length)  # a chunk longer than the sequence would only pad it
  padded = pad_length(length, chunk_size)
  chunks = split_chunks(pad_axis(x, padded, axis=1), chunk_size, axis=1)  # [b, n, c, d]
  chunks = jnp.moveaxis(chunks, 1, 0)

  @jax.checkpoint
  def one_chunk(chunk, index, wi, wo):
    chunk_rng = None if rng is None else jax.random.fold_in(rng, index)
    return feed_forward(chunk, wi, wo, activation, dropout_rate, chunk_rng)

  out = jax.lax.map(lambda args: one_chunk(*args, wi, wo),
                    (chunks, jnp.arange(chunks.shape[0])))
  out = jnp.moveaxis(out, 0, 1).reshape(x.shape[:1] + (padded,) + x.shape[2:])
  return out[:, :length]


class ChunkedFeedForward(nn.Module):
  """Position-wise feed-forward `[batch, length, d_model] -> [batch, length, d_model]`.

  Parameters `wi {kernel [d_model, d_ff], bias}` and `wo {kernel [d_ff, d_model], bias}`
  (lecun-normal kernels, zero biases, as `nn.Dense`). The layer norm before it belongs to
  the caller.

  Attributes:
    d_ff: hidden size.
    chunk_size: positions per chunk; None = unchunked.
    activation: name in `ACTIVATIONS` ('relu', 'gelu' (erf), 'gelu_new'/'gelu_approx'
      (tanh), 'silu'/'swish', 'tanh') or a callable.
    dropout_rate: dropout after `wi` and after `wo` ('dropout' rng).
    deterministic: disables dropout; merged with the call argument.
    dtype: computation dtype (parameters stay float32).
  """
  d_ff: int
  chunk_size: Optional[int] = None
  activation: Union[str, Callable] = "relu"
  dropout_rate: float = 0.
  deterministic: Optional[bool] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, deterministic: Optional[bool] = None) -> jnp.ndarray:
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    activation = get_activation(self.activation)
    d_model = x.shape[-1]
    wi = _DenseParams(d_model, self.d_ff, name="wi")()
    wo = _DenseParams(self.d_ff, d_model, name="wo")()
    x = x.astype(self.dtype)
    rng = None
    if not deterministic and self.dropout_rate > 0.:
      rng = self.make_rng("dropout")
    if self.chunk_size is None:
      return feed_forward(x, wi, wo, activation, self.dropout_rate, rng)
    return chunked_feed_forward(x, wi, wo, activation, self.chunk_size, self.dropout_rate,
                                rng)
