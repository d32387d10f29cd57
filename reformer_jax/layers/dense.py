"""Parameters of dense layers created by name, for layers that apply them inside loops.

Flax submodules cannot be called inside `lax.map` / `custom_vjp` bodies, so the chunked
layers create their parameters with these param-only modules (same names, shapes and
initialisers as `nn.Dense` / `nn.LayerNorm`) and apply them with the pure functions.
"""
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax.layers import logical_axes, xla_cpu
from reformer_jax.layers.chunking import map_positions
from reformer_jax.layers.dropout import dropout

# Logical axes of the attention projections' kernels: into heads [d_model, n_heads * d_head]
# and out of them [n_heads * d_head, d_model].
TO_HEADS = (logical_axes.EMBED, logical_axes.HEADS)
FROM_HEADS = (logical_axes.HEADS, logical_axes.EMBED)


class DenseParams(nn.Module):
  """`kernel [d_in, d_out]` (lecun normal) and, if `use_bias`, `bias [d_out]` (zeros);
  `axes`: the logical names of (d_in, d_out) (`logical_axes`)."""
  d_in: int
  d_out: int
  axes: Tuple[str, str]
  use_bias: bool = True

  @nn.compact
  def __call__(self) -> Tuple[jnp.ndarray, Optional[jnp.ndarray]]:
    kernel = logical_axes.param(self, "kernel", nn.initializers.lecun_normal(),
                                (self.d_in, self.d_out), self.axes)
    bias = None
    if self.use_bias:
      bias = logical_axes.param(self, "bias", nn.initializers.zeros_init(), (self.d_out,),
                                self.axes[1:])
    return kernel, bias


class LayerNormParams(nn.Module):
  """`scale [d]` (ones) and `bias [d]` (zeros), as `nn.LayerNorm`."""
  d: int

  @nn.compact
  def __call__(self) -> Tuple[jnp.ndarray, jnp.ndarray]:
    return tuple(logical_axes.param(self, name, init, (self.d,), (logical_axes.NORM,))
                 for name, init in (("scale", nn.initializers.ones_init()),
                                    ("bias", nn.initializers.zeros_init())))


def dense(x: jnp.ndarray, kernel: jnp.ndarray, bias: Optional[jnp.ndarray] = None
          ) -> jnp.ndarray:
  """`x @ kernel + bias` in `x.dtype`; `x` `[..., d_in]` -> `[..., d_out]`.

  One 2-D matrix product over the flattened leading axes: XLA:CPU runs its gradients
  without the transposing copies it makes for a product with several leading axes (the
  16,384-token crime-and-punishment step: 3.38 instead of 3.81 s).
  """
  flat = jnp.dot(x.reshape(-1, x.shape[-1]), kernel.astype(x.dtype))
  if bias is not None:
    flat = flat + _last_axis(bias.astype(x.dtype), 2)
  return flat.reshape(x.shape[:-1] + kernel.shape[-1:])


def project_heads(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """Per-head projections of `x` `[b, m, d_in]` by `kernel` `[d_in, heads, d_head]`, as one
  2-D matrix product (see `dense`): `[b, heads, m, d_head]`."""
  b, m, _ = x.shape
  _, heads, d_head = kernel.shape
  y = dense(x, kernel.reshape(kernel.shape[0], heads * d_head))
  return y.reshape(b, m, heads, d_head).transpose(0, 2, 1, 3)


def merge_heads(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """Heads `[b, heads, m, d_head]` through `kernel` `[heads, d_head, d_out]`, summed over
  heads, as one 2-D matrix product (see `dense`): `[b, m, d_out]`."""
  b, heads, m, d_head = x.shape
  x = x.transpose(0, 2, 1, 3).reshape(b, m, heads * d_head)
  return dense(x, kernel.reshape(heads * d_head, kernel.shape[-1]))


def _last_axis(v: jnp.ndarray, ndim: int) -> jnp.ndarray:
  """`v` `[d]` reshaped to broadcast along the last axis of an `ndim` array."""
  return v.reshape((1,) * (ndim - 1) + (-1,))


def layer_norm(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray, eps: float
               ) -> jnp.ndarray:
  """LayerNorm over the last axis with float32 statistics, as `nn.LayerNorm`; in `x.dtype`."""
  y = x.astype(jnp.float32)
  mean, mean_square = xla_cpu.select("layer_norm_moments", _moments_by_products, _moments, y)
  var = jnp.maximum(mean_square - mean * mean, 0.)
  y = (y - mean) * jax.lax.rsqrt(var + eps)
  scale, bias = (_last_axis(v.astype(jnp.float32), y.ndim) for v in (scale, bias))
  return (y * scale + bias).astype(x.dtype)


def _moments(y):
  return jnp.mean(y, axis=-1, keepdims=True), jnp.mean(y * y, axis=-1, keepdims=True)


def _moments_by_products(y):
  """`_moments` as matrix-vector products: XLA:CPU splits a row reduction into a slower
  reduce-window + reduce pair (the 16,384-token step: 2.50 instead of 2.63 s)."""
  average = jnp.full((y.shape[-1], 1), 1. / y.shape[-1], jnp.float32)
  return tuple(jnp.dot(v, average, precision=jax.lax.Precision.HIGHEST) for v in (y, y * y))


def position_rows(batch: int, length: int, positions: jnp.ndarray) -> jnp.ndarray:
  """Global row ids `b * length + positions[b, ...]` `[batch, ...]` of `[batch, length, d]`
  rows, for position-keyed dropout (`dropout(..., rows=, n_rows=batch * length)`)."""
  b = jnp.arange(batch, dtype=jnp.int32).reshape((batch,) + (1,) * (positions.ndim - 1))
  return b * length + positions


def output_contributions(out: jnp.ndarray, kernel: jnp.ndarray, dropout_rate: float,
                         rng: Optional[jax.Array], rows: jnp.ndarray, n_rows: int, dtype
                         ) -> jnp.ndarray:
  """`output_projection` of attention outputs at scattered rows, as per-row contributions.

  Args:
    out: `[b, h, m, d_head]` outputs of m entries per head.
    kernel: `[h, d_head, d_model]`.
    dropout_rate, rng: the output dropout, keyed by `rows` as in `output_projection`.
    rows: int32 `[b, 1, m]` (the heads' entries are the same positions: heads are summed)
      or `[b, h, m]` (each head's own positions), global rows `position_rows`.
    n_rows: `batch * length`.
    dtype: computation dtype.

  Returns:
    `[b, 1 or h, m, d_model]`: summed over the rows they belong to, the output projection.
  """
  out, kernel = out.astype(dtype), kernel.astype(dtype)
  if rows.shape[1] == 1:
    y = merge_heads(out, kernel)[:, None]
  else:
    y = jnp.stack([dense(out[:, i], kernel[i]) for i in range(out.shape[1])], axis=1)
  return dropout(y, dropout_rate, rng, rows, n_rows)


def output_projection(out: jnp.ndarray, kernel: jnp.ndarray, dropout_rate: float,
                      rng: Optional[jax.Array], chunk_len: int, dtype) -> jnp.ndarray:
  """Heads `[b, h, L, d_head]` through `kernel` `[h, d_head, d_model]` and dropout, in chunks.

  Returns `[b, L, d_model]`. The dropout mask of position p is keyed by its row
  `b * L + p` (`position_rows`), the same whatever the chunking.
  """
  batch, _, length, _ = out.shape
  chunk = min(chunk_len, length)

  def one_chunk(params, heads, index):
    kernel, rng = params
    y = merge_heads(heads.astype(dtype), kernel.astype(dtype))
    positions = index * chunk + jnp.arange(y.shape[1], dtype=jnp.int32)
    rows = position_rows(batch, length, jnp.broadcast_to(positions, y.shape[:2]))
    return dropout(y, dropout_rate, rng, rows, batch * length)

  return map_positions(one_chunk, (kernel, rng), out, chunk_len, axis=2)
