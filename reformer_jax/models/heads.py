"""Task heads on the encoder's output (Hugging Face's layouts) and their loss sums.

`ClassificationHead` is HF's `ReformerClassificationHead` (one position's hidden state
`[batch, 2 * d_model]` -> dropout -> `dense` (2d -> d) -> tanh -> dropout -> `out_proj`
(d -> num_labels)). `span_logits` is HF's `qa_outputs` (2d -> 2: start / end logits per
position), computed a chunk of positions at a time from the two streams, so the final
hidden states `[batch, length, 2 * d_model]` are never stored for the backward pass.
The losses return sums `{'loss', 'weight', 'correct'}` as `ReformerLM` does with targets
(mean loss = loss / weight, accuracy = correct / weight).
"""
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax.layers.chunking import map_positions
from reformer_jax.layers import logical_axes
from reformer_jax.layers.dense import DenseParams, dense
from reformer_jax.layers.dropout import dropout


class ClassificationHead(nn.Module):
  """`h` `[batch, 2 * d_model]` -> logits `[batch, num_labels]` (float32).

  Parameters `dense {kernel [2d, d], bias [d]}` and `out_proj {kernel [d, num_labels],
  bias [num_labels]}`; dropout ('dropout' rng) before `dense` and before `out_proj`.

  Attributes:
    d_model: width d of one stream (the input is 2d wide).
    num_labels: classes.
    dropout_rate: HF's `classifier_dropout` (default there: `hidden_dropout_prob`).
    dtype: computation dtype (parameters stay float32).
  """
  d_model: int
  num_labels: int
  dropout_rate: float = 0.
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jnp.ndarray, deterministic: bool) -> jnp.ndarray:
    if h.ndim != 2 or h.shape[-1] != 2 * self.d_model:
      raise ValueError(f"the classification head takes [batch, 2 * d_model] = [batch, "
                       f"{2 * self.d_model}], got {h.shape}")
    rngs = [None, None]
    if not deterministic and self.dropout_rate > 0.:
      rngs = list(jax.random.split(self.make_rng("dropout")))
    inner = DenseParams(2 * self.d_model, self.d_model, (logical_axes.EMBED, logical_axes.MLP),
                        name="dense")()
    out = DenseParams(self.d_model, self.num_labels, (logical_axes.MLP, logical_axes.CLASSES),
                      name="out_proj")()
    h = dropout(h.astype(self.dtype), self.dropout_rate, rngs[0])
    h = jnp.tanh(dense(h, *inner))
    h = dropout(h, self.dropout_rate, rngs[1])
    return dense(h, *out).astype(jnp.float32)


def span_logits(parts: Tuple[jnp.ndarray, ...], kernel: jnp.ndarray, bias: jnp.ndarray,
                chunk_len: int, transform: Optional[Callable[..., jnp.ndarray]] = None,
                transform_params: Any = None, dtype=jnp.float32
                ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Start and end logits `[batch, length]` (float32) of `transform(concat(parts)) @ kernel + bias`.

  Args:
    parts: streams `[batch, length, d_i]`, concatenated per chunk (widths sum to d).
    kernel: `[d, 2]`; bias: `[2]` (HF's `qa_outputs`).
    chunk_len: positions per chunk (`map_positions`: recomputed in the backward pass).
    transform: pure position-wise `transform(transform_params, h, chunk_index)` applied
      to each chunk first (the final LayerNorm and dropout).
    transform_params: its parameters and keys.
    dtype: computation dtype.
  """
  def chunk_logits(params, hs, index):
    kernel, bias, t_params = params
    h = jnp.concatenate(hs, axis=-1)
    if transform is not None:
      h = transform(t_params, h, index)
    return dense(h.astype(dtype), kernel, bias).astype(jnp.float32)

  logits = map_positions(chunk_logits, (kernel, bias, transform_params), tuple(parts),
                         chunk_len)
  return logits[..., 0], logits[..., 1]


def _cross_entropy_sums(logits: jnp.ndarray, labels: jnp.ndarray, weights: jnp.ndarray):
  """(sum of weighted cross-entropy, sum of weighted argmax == label) of logits `[n, k]`."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  safe = jnp.clip(labels, 0, logits.shape[-1] - 1)
  nll = -jnp.take_along_axis(log_probs, safe[:, None], axis=-1)[:, 0]
  correct = jnp.argmax(logits, axis=-1) == labels
  return jnp.sum(nll * weights), jnp.sum(correct * weights)


def classification_sums(logits: jnp.ndarray, labels: jnp.ndarray,
                        weights: Optional[jnp.ndarray] = None) -> Dict[str, jnp.ndarray]:
  """Cross-entropy sums of logits `[batch, num_labels]` against int labels `[batch]`.

  `weights` `[batch]` (e.g. 0 for padding examples); default ones. Returns float32
  {'loss': weighted cross-entropy, 'weight': weights, 'correct': weighted accuracy count}.
  """
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(f"need logits [batch, num_labels] and labels [batch]; got logits "
                     f"{logits.shape}, labels {labels.shape}")
  weights = jnp.ones(labels.shape, jnp.float32) if weights is None else weights
  weights = weights.astype(jnp.float32)
  loss, correct = _cross_entropy_sums(logits, labels, weights)
  return {"loss": loss, "weight": jnp.sum(weights), "correct": correct}


def span_sums(start_logits: jnp.ndarray, end_logits: jnp.ndarray, start_positions: jnp.ndarray,
              end_positions: jnp.ndarray) -> Dict[str, jnp.ndarray]:
  """Cross-entropy sums of span logits `[batch, length]` against positions `[batch]`.

  As HF's `ReformerForQuestionAnswering`, positions are clipped to `[0, length]` and a
  start or end at `length` or beyond (an answer cut off by truncation) is ignored. Returns float32 {'loss': start plus end
  cross-entropy, 'weight': number of counted starts plus ends, 'correct': starts and ends
  predicted exactly}; loss / weight equals HF's loss when both ends count equally often.
  """
  if start_logits.shape != end_logits.shape or start_logits.ndim != 2:
    raise ValueError(f"need start and end logits [batch, length]; got {start_logits.shape} "
                     f"and {end_logits.shape}")
  for name, value in (("start_positions", start_positions), ("end_positions", end_positions)):
    if value.shape != start_logits.shape[:1]:
      raise ValueError(f"{name} must be [batch] = {start_logits.shape[:1]}, got {value.shape}")
  length = start_logits.shape[1]
  sums = {"loss": 0., "weight": 0., "correct": 0.}
  for logits, positions in ((start_logits, start_positions), (end_logits, end_positions)):
    positions = jnp.clip(positions, 0, length)
    weights = (positions < length).astype(jnp.float32)
    loss, correct = _cross_entropy_sums(logits, positions, weights)
    sums = {"loss": sums["loss"] + loss, "weight": sums["weight"] + jnp.sum(weights),
            "correct": sums["correct"] + correct}
  return sums
