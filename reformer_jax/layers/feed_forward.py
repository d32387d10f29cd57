"""Position-wise feed-forward, optionally chunked over positions.

Hugging Face order: `wi -> dropout -> activation -> wo -> dropout`. When chunked, the
positions are split into chunks processed one at a time by `lax.map`, each under
`jax.checkpoint`, so only one chunk's `[.., chunk_size, d_ff]` activation is alive in the
forward pass and in the backward pass (it is recomputed there). Being per-position, the
chunked result equals the unchunked one; lengths that are not a multiple of `chunk_size`
are padded and sliced back.
"""
import functools
from typing import Callable, Optional, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax.layers.chunking import check_sequence, map_positions
from reformer_jax.layers import logical_axes
from reformer_jax.layers.dense import DenseParams, dense, layer_norm
from reformer_jax.layers.dropout import dropout

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


def feed_forward(x: jnp.ndarray, wi, wo, activation: Callable, dropout_rate: float = 0.,
                 rng: Optional[jax.Array] = None) -> jnp.ndarray:
  """`wo(dropout(act(dropout(wi(x)))))` -> dropout; `wi`, `wo` are (kernel, bias) pairs.

  `x`: `[..., d_model]` -> `[..., d_model]`. `rng` None disables dropout. Computed on the
  flattened positions `[n, d]` (the same dropout masks): the hidden gradient then feeds
  the bias gradient and both weight products in one shape, which XLA:CPU computes once
  instead of once per shape.
  """
  rng_hidden = rng_out = None
  if rng is not None:
    rng_hidden, rng_out = jax.random.split(rng)
  flat = x.reshape(-1, x.shape[-1])
  h = activation(dropout(dense(flat, *wi), dropout_rate, rng_hidden))
  y = dropout(dense(h, *wo), dropout_rate, rng_out)
  return y.reshape(x.shape[:-1] + y.shape[-1:])


def chunked_feed_forward(x: jnp.ndarray, wi, wo, activation: Callable, chunk_size: int,
                         dropout_rate: float = 0., rng: Optional[jax.Array] = None,
                         norm: Optional[Tuple[jnp.ndarray, jnp.ndarray]] = None,
                         norm_eps: float = 1e-12, dtype=None,
                         chunk_index: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """`feed_forward` over chunks of `chunk_size` positions, one chunk alive at a time.

  `x`: `[batch, length, d_model]` -> `[batch, length, d_model]`. Chunk i's dropout uses
  `fold_in(rng, i)`. `norm`: optional LayerNorm `(scale, bias)` applied to each chunk
  first, so only `x` itself is kept for the backward pass. `dtype`: computation dtype
  (default `x.dtype`), applied after the norm. `chunk_index`: `x` is chunk
  `chunk_index` of a longer sequence; computes just it, as the full call would.
  """
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1 (or None for no chunking), got {chunk_size}")

  def one_chunk(params, chunk, index):
    wi, wo, norm, rng = params
    if norm is not None:
      chunk = layer_norm(chunk, *norm, norm_eps)
    chunk_rng = None if rng is None else jax.random.fold_in(rng, index)
    return feed_forward(chunk.astype(dtype or x.dtype), wi, wo, activation, dropout_rate,
                        chunk_rng)

  if chunk_index is not None:
    return one_chunk((wi, wo, norm, rng), x, chunk_index)
  return map_positions(one_chunk, (wi, wo, norm, rng), x, chunk_size)


class ChunkedFeedForward(nn.Module):
  """Position-wise feed-forward `[batch, length, d_model] -> [batch, length, d_model]`.

  Parameters `wi {kernel [d_model, d_ff], bias}` and `wo {kernel [d_ff, d_model], bias}`
  (lecun-normal kernels, zero biases, as `nn.Dense`). A layer norm before it can be
  passed to `__call__` as `norm=(scale, bias)` (epsilon `norm_eps`): it is then applied
  inside the chunks.

  Attributes:
    d_ff: hidden size.
    chunk_size: positions per chunk; None = unchunked.
    activation: name in `ACTIVATIONS` ('relu', 'gelu' (erf), 'gelu_new'/'gelu_approx'
      (tanh), 'silu'/'swish', 'tanh') or a callable.
    dropout_rate: dropout after `wi` and after `wo` ('dropout' rng).
    norm_eps: epsilon of the LayerNorm given as `norm=`.
    deterministic: disables dropout; merged with the call argument.
    dtype: computation dtype (parameters stay float32).
  """
  d_ff: int
  chunk_size: Optional[int] = None
  activation: Union[str, Callable] = "relu"
  dropout_rate: float = 0.
  norm_eps: float = 1e-12
  deterministic: Optional[bool] = None
  dtype: jnp.dtype = jnp.float32

  @property
  def position_chunk(self) -> Optional[int]:
    """Positions per chunk (None: one chunk); see `chunk_index`."""
    return self.chunk_size

  @nn.compact
  def __call__(self, x: jnp.ndarray, deterministic: Optional[bool] = None,
               norm: Optional[Tuple[jnp.ndarray, jnp.ndarray]] = None,
               chunk_index: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """`x` `[batch, length, d_model]` -> `[batch, length, d_model]`.

    With `chunk_index` i, `x` holds positions `[i * c, (i + 1) * c)` of a longer sequence
    (`c = min(chunk_size, length)`) and the result equals those positions of the call on
    the whole sequence (same dropout).
    """
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    check_sequence(x)
    activation = get_activation(self.activation)
    d_model = x.shape[-1]
    wi = DenseParams(d_model, self.d_ff, (logical_axes.EMBED, logical_axes.MLP), name="wi")()
    wo = DenseParams(self.d_ff, d_model, (logical_axes.MLP, logical_axes.EMBED), name="wo")()
    rng = None
    if not deterministic and self.dropout_rate > 0.:
      rng = self.make_rng("dropout")
    chunk = x.shape[1] if self.chunk_size is None else self.chunk_size
    return chunked_feed_forward(x, wi, wo, activation, chunk, self.dropout_rate, rng,
                                norm=norm, norm_eps=self.norm_eps, dtype=self.dtype,
                                chunk_index=chunk_index)
