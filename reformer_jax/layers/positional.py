"""Position encodings: axial (factorised), learned table, and sinusoidal.

Both learned tables start ~ N(0, 0.02) (Hugging Face's `initializer_range`), well below the
token embedding's 1/sqrt(d_model). Hugging Face draws axial weights ~ N(0, 1)
(`axial_norm_std=1.0`): then a position outweighs its token's identity at the input, and about
half of the seeds of configs/listops_small.gin stayed on the majority class (docs/encoders.md).
Imported weights (`reformer_jax.hf`) replace the initial values either way.
"""
import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax.layers import logical_axes


def check_ids(ids: jnp.ndarray, size: int, what: str, size_name: str, how_to_fix: str) -> None:
  """Raises if int `ids` fall outside `[0, size)`; only concrete ids are checked (on the
  host), traced ones are not."""
  if not isinstance(ids, jax.core.Tracer) and ids.size:
    ids = np.asarray(ids)  # also concrete ids closed over by a traced function
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= size:
      raise ValueError(f"{what} must lie in [0, {size}) ({size_name} {size}), got [{lo}, {hi}]; "
                       f"{how_to_fix}")


def _check_positions(positions: jnp.ndarray, max_len: int, how_to_fix: str) -> None:
  """Raises if `positions` `[batch, length]` cannot fit in `max_len` (values checked when concrete)."""
  if positions.ndim != 2:
    raise ValueError(f"positions must be [batch, length] integers, got shape {positions.shape}")
  if not jnp.issubdtype(positions.dtype, jnp.integer):
    raise ValueError(f"positions must be integers, got {positions.dtype}")
  length = positions.shape[1]
  if length > max_len:
    raise ValueError(f"sequence length {length} exceeds the maximum length {max_len} of the "
                     f"position embedding; {how_to_fix}")
  check_ids(positions, max_len, "positions", "maximum length", how_to_fix)


def _unwrapped(ids: jnp.ndarray, size: int) -> jnp.ndarray:
  """Int `ids` with negative entries set to `size`: out of range for a `mode='fill'` take,
  which would otherwise wrap them to the end of the table (one elementwise op)."""
  if ids.dtype.itemsize < 4:  # make room for `size`
    ids = ids.astype(jnp.int32)
  return jnp.where(ids < 0, size, ids)


def lookup(table: jnp.ndarray, ids: jnp.ndarray) -> jnp.ndarray:
  """Rows `table[ids]` `[..., d]` of `table` `[n, d]`; ids outside `[0, n)`, negative ones
  included, give NaN rows."""
  return jnp.take(table, _unwrapped(ids, table.shape[0]), axis=0, mode="fill",
                  fill_value=jnp.nan)


class AxialPositionalEmbedding(nn.Module):
  """Axial (factorised) learned position embedding, initialised ~ N(0, 0.02).

  A table for `prod(axial_shape)` positions is factorised into one `[s_i, d_i]` table per
  axis (`sum(s_i * d_i)` parameters). Position p is written in mixed radix with digits
  most-significant first, `p = sum_i digit_i * prod(axial_shape[i+1:])`, and embedded as
  `concat_i(axis_i[digit_i])`; for two axes (s0, s1): `concat(axis_0[p // s1],
  axis_1[p % s1])`, as Hugging Face. Any positions in `[0, prod(axial_shape))` work, so
  sequences shorter than `prod(axial_shape)` are fine in training and evaluation. Inside
  `jit` out-of-range positions (negative ones too) cannot be checked and give NaN.

  Attributes:
    axial_shape: positions per axis; their product is the maximum length.
    axial_dims: embedding size per axis; they must sum to d_model.
    d_model: if given, checked against `sum(axial_dims)`.
  """
  axial_shape: Sequence[int]
  axial_dims: Sequence[int]
  d_model: Optional[int] = None

  def _validate(self):
    shape, dims = tuple(self.axial_shape), tuple(self.axial_dims)
    if len(shape) != len(dims) or not shape:
      raise ValueError(f"axial_shape {shape} and axial_dims {dims} must be non-empty and have "
                       "the same number of axes")
    if any(s < 1 for s in shape) or any(d < 1 for d in dims):
      raise ValueError(f"axial_shape {shape} and axial_dims {dims} must be positive")
    if self.d_model is not None and sum(dims) != self.d_model:
      raise ValueError(f"axial_dims {dims} sum to {sum(dims)} but d_model is {self.d_model}; "
                       "choose axial_dims that sum to d_model")

  @property
  def max_len(self) -> int:
    return math.prod(self.axial_shape)

  @nn.compact
  def __call__(self, positions: jnp.ndarray) -> jnp.ndarray:
    """`positions`: `[batch, length]` ints -> `[batch, length, sum(axial_dims)]` float32."""
    self._validate()
    _check_positions(positions, self.max_len,
                     f"change axial_shape {tuple(self.axial_shape)} so that its product is at "
                     "least the sequence length")
    weights = [self.param(f"axis_{i}", nn.initializers.normal(stddev=0.02), (s, d))
               for i, (s, d) in enumerate(zip(self.axial_shape, self.axial_dims))]
    for i in range(len(weights)):
      logical_axes.declare(self, f"axis_{i}", (logical_axes.POSITION, logical_axes.EMBED))
    digits = []
    rest = _unwrapped(positions, self.max_len)
    for s in reversed(self.axial_shape[1:]):
      digits.append(rest % s)
      rest = rest // s
    digits.append(rest)
    digits.reverse()
    embedded = [jnp.take(w, d, axis=0, mode="fill", fill_value=jnp.nan)
                for w, d in zip(weights, digits)]
    return jnp.concatenate(embedded, axis=-1)


class LearnedPositionalEmbedding(nn.Module):
  """Standard learned position table `embedding [max_len, d_model]` ~ N(0, 0.02).

  Inside `jit` out-of-range positions (negative ones too) cannot be checked and give NaN.

  Attributes:
    max_len: number of positions.
    d_model: embedding size.
  """
  max_len: int
  d_model: int

  @nn.compact
  def __call__(self, positions: jnp.ndarray) -> jnp.ndarray:
    """`positions`: `[batch, length]` ints -> `[batch, length, d_model]` float32."""
    _check_positions(positions, self.max_len, "increase max_len")
    table = self.param("embedding", nn.initializers.normal(stddev=0.02),
                       (self.max_len, self.d_model))
    logical_axes.declare(self, "embedding", (logical_axes.POSITION, logical_axes.EMBED))
    return lookup(table, positions)


def sinusoidal_positions(positions: jnp.ndarray, d_model: int) -> jnp.ndarray:
  """Fixed sinusoidal encoding (Vaswani et al.), sin on even and cos on odd channels.

  Channel j uses frequency `10000 ** (-2 * (j // 2) / d_model)`.

  Args:
    positions: `[batch, length]` ints.
    d_model: encoding size (any positive integer).

  Returns:
    `[batch, length, d_model]` float32.
  """
  if d_model < 1:
    raise ValueError(f"d_model must be >= 1, got {d_model}")
  channel = jnp.arange(d_model)
  rate = jnp.power(10000., -2. * (channel // 2) / d_model).astype(jnp.float32)
  angle = positions.astype(jnp.float32)[..., None] * rate[None, None, :]
  return jnp.where((channel % 2 == 0)[None, None, :], jnp.sin(angle), jnp.cos(angle))
