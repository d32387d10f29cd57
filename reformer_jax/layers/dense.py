"""Parameters of dense layers created by name, for layers that apply them inside loops.

Flax submodules cannot be called inside `lax.map` / `custom_vjp` bodies, so the chunked
layers create their parameters with these param-only modules (same names, shapes and
initialisers as `nn.Dense` / `nn.LayerNorm`) and apply them with the pure functions.
"""
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax.layers.chunking import map_positions
from reformer_jax.layers.dropout import dropout


class DenseParams(nn.Module):
  """`kernel [d_in, d_out]` (lecun normal) and, if `use_bias`, `bias [d_out]` (zeros)."""
  d_in: int
  d_out: int
  use_bias: bool = True

  @nn.compact
  def __call__(self) -> Tuple[jnp.ndarray, Optional[jnp.ndarray]]:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (self.d_in, self.d_out))
    bias = None
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros_init(), (self.d_out,))
    return kernel, bias


class LayerNormParams(nn.Module):
  """`scale [d]` (ones) and `bias [d]` (zeros), as `nn.LayerNorm`."""
  d: int

  @nn.compact
  def __call__(self) -> Tuple[jnp.ndarray, jnp.ndarray]:
    return (self.param("scale", nn.initializers.ones_init(), (self.d,)),
            self.param("bias", nn.initializers.zeros_init(), (self.d,)))


def dense(x: jnp.ndarray, kernel: jnp.ndarray, bias: Optional[jnp.ndarray] = None
          ) -> jnp.ndarray:
  """`x @ kernel + bias` in `x.dtype`; `x` `[..., d_in]` -> `[..., d_out]`."""
  y = jnp.einsum("...i,io->...o", x, kernel.astype(x.dtype))
  if bias is not None:
    y = y + _last_axis(bias.astype(x.dtype), y.ndim)
  return y


def _last_axis(v: jnp.ndarray, ndim: int) -> jnp.ndarray:
  """`v` `[d]` reshaped to broadcast along the last axis of an `ndim` array."""
  return v.reshape((1,) * (ndim - 1) + (-1,))


def layer_norm(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray, eps: float
               ) -> jnp.ndarray:
  """LayerNorm over the last axis with float32 statistics, as `nn.LayerNorm`; in `x.dtype`."""
  y = x.astype(jnp.float32)
  mean = jnp.mean(y, axis=-1, keepdims=True)
  var = jnp.maximum(jnp.mean(y * y, axis=-1, keepdims=True) - mean * mean, 0.)
  y = (y - mean) * jax.lax.rsqrt(var + eps)
  scale, bias = (_last_axis(v.astype(jnp.float32), y.ndim) for v in (scale, bias))
  return (y * scale + bias).astype(x.dtype)


def output_projection(out: jnp.ndarray, kernel: jnp.ndarray, dropout_rate: float,
                      rng: Optional[jax.Array], chunk_len: int, dtype) -> jnp.ndarray:
  """Heads `[b, h, L, d_head]` through `kernel` `[h, d_head, d_model]` and dropout, in chunks.

  Returns `[b, L, d_model]`; chunk i's dropout uses `fold_in(rng, i)`.
  """
  def one_chunk(params, heads, index):
    kernel, rng = params
    y = jnp.einsum("bhcd,hdo->bco", heads.astype(dtype), kernel.astype(dtype))
    return dropout(y, dropout_rate, None if rng is None else jax.random.fold_in(rng, index))

  return map_positions(one_chunk, (kernel, rng), out, chunk_len, axis=2)
