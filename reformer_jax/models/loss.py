"""Output projection fused with cross-entropy, chunked over positions.

The `[batch, length, vocab]` logits of a long sequence can outweigh every other activation
of a Reformer. `chunked_cross_entropy` computes them for `chunk_len` positions at a time
(`map_positions`: recomputed in the backward pass), so the forward and the backward pass
each hold the logits of one `[batch, chunk_len, vocab]` chunk.
"""
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

from reformer_jax.layers.chunking import map_positions
from reformer_jax.layers.softmax import row_max, row_sum


def _chunk_losses(hidden, kernel, bias, targets, weights):
  """Weighted (loss, correct) per position `[b, c]`; hidden `[b, c, d]`, targets/weights `[b, c]`.

  Row maxima and sums as in `layers/softmax.py` (a halving tree, products with ones); the
  target's logit is selected by comparison, so its gradient is a select, not a scatter.
  """
  logits = jnp.einsum("bcd,dv->bcv", hidden, kernel.astype(hidden.dtype),
                      preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)[None, None, :]
  top = row_max(logits)
  lse = (top + jnp.log(row_sum(jnp.exp(logits - top))))[..., 0]
  columns = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2)
  is_target = columns == targets[..., None]
  target_logit = row_sum(jnp.where(is_target, logits, 0.))[..., 0]
  # argmax == target: the target's logit is the maximum and no earlier column reaches it.
  earlier_max = row_sum(jnp.where((columns < targets[..., None]) & (logits >= top), 1., 0.))
  correct = (target_logit >= top[..., 0]) & (earlier_max[..., 0] == 0)
  return (lse - target_logit) * weights, correct * weights


def chunked_cross_entropy(hidden: Union[jnp.ndarray, Sequence[jnp.ndarray]],
                          kernel: jnp.ndarray, bias: Optional[jnp.ndarray],
                          targets: jnp.ndarray, weights: Optional[jnp.ndarray] = None,
                          chunk_len: int = 4096,
                          transform: Optional[Callable[..., jnp.ndarray]] = None,
                          transform_params: Any = None
                          ) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Sums of weighted cross-entropy of `transform(hidden) @ kernel + bias` against `targets`.

  Args:
    hidden: `[batch, length, d]` final hidden states, or a sequence of parts
      `[batch, length, d_i]` concatenated (per chunk) along the features.
    kernel: `[d, vocab]` output projection.
    bias: `[vocab]` or None.
    targets: `[batch, length]` int token ids.
    weights: `[batch, length]` float weights (e.g. the padding mask); None = ones.
    chunk_len: positions per chunk; the length is padded (with weight 0) to a multiple.
    transform: optional pure position-wise `transform(transform_params, h [batch, chunk,
      d], chunk_index) -> h` applied inside the chunks (e.g. the final LayerNorm and
      dropout), so that only the parts of `hidden` are kept for the backward pass.
    transform_params: its parameters (differentiated) and keys.

  Returns:
    `(loss_sum, weight_sum, correct_sum)` float32 scalars: sum of weighted cross-entropy,
    sum of weights, and weighted count of positions whose argmax equals the target.
  """
  parts = tuple(hidden) if isinstance(hidden, (list, tuple)) else (hidden,)
  width = sum(p.shape[-1] for p in parts)
  if (any(p.ndim != 3 or p.shape[:2] != parts[0].shape[:2] for p in parts)
      or kernel.ndim != 2 or width != kernel.shape[0]):
    raise ValueError(f"need hidden [batch, length, d] (or parts whose widths add up to d) "
                     f"and kernel [d, vocab]; got hidden {[p.shape for p in parts]}, "
                     f"kernel {kernel.shape}")
  if bias is not None and bias.shape != kernel.shape[1:]:
    raise ValueError(f"bias must be [vocab] = {kernel.shape[1:]}, got {bias.shape}")
  if targets.shape != parts[0].shape[:2]:
    raise ValueError(f"targets must be [batch, length] = {parts[0].shape[:2]}, got "
                     f"{targets.shape}")
  if weights is None:
    weights = jnp.ones(targets.shape, jnp.float32)
  if weights.shape != targets.shape:
    raise ValueError(f"weights must be [batch, length] = {targets.shape}, got {weights.shape}")
  if not isinstance(chunk_len, int) or chunk_len < 1:
    raise ValueError(f"chunk_len must be a positive int, got {chunk_len!r}")
  weights = weights.astype(jnp.float32)

  def losses(params, inputs, index):
    hs, t, w = inputs
    kernel, bias, t_params = params
    h = jnp.concatenate(hs, axis=-1) if len(hs) > 1 else hs[0]
    if transform is not None:
      h = transform(t_params, h, index)
    return _chunk_losses(h, kernel, bias, t, w)

  loss, correct = map_positions(losses, (kernel, bias, transform_params),
                                (parts, targets, weights), chunk_len)
  return jnp.sum(loss), jnp.sum(weights), jnp.sum(correct)
