"""Bidirectional Reformer encoders with task heads (Hugging Face's layouts).

All share `ReformerLM`'s body (`encode`: embedding, positions, the reversible stack of
local / LSH / full attention and chunked feed-forward, final LayerNorm over the two
concatenated streams) and its parameter names, with `config.causal=False`:

  ReformerEncoder                     HF ReformerModel: final hidden states [b, L, 2d]
  ReformerForMaskedLM                 HF ReformerForMaskedLM (see `masked_lm.py`)
  ReformerForSequenceClassification   HF ReformerForSequenceClassification:
                                      + classifier/{dense, out_proj}
  ReformerForQuestionAnswering        HF ReformerForQuestionAnswering: + qa_outputs

Bidirectional attention: local attention looks at `local_n_chunks_before` /
`local_n_chunks_after` neighbour chunks (wrapping around as HF with `local_wrap`), LSH
attention at `lsh_n_chunks_before` / `lsh_n_chunks_after` sorted chunks with the soft
self-mask (a token attends to itself only when nothing else is in reach); padding
(`mask` False) is never attended to.
"""
from typing import Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax.layers import logical_axes
from reformer_jax.layers.dense import DenseParams, layer_norm
from reformer_jax.layers.dropout import dropout
from reformer_jax.layers.positional import check_ids
from reformer_jax.models.config import ReformerConfig
from reformer_jax.models.heads import (ClassificationHead, classification_sums, span_logits,
                                       span_sums)
from reformer_jax.models.reformer_lm import check_inputs, encode

Rotations = Optional[Union[jnp.ndarray, Sequence[jnp.ndarray]]]


def check_bidirectional(config: ReformerConfig, model: str) -> None:
  """Raises ValueError unless `config.causal` is False (an encoder sees both directions)."""
  if config.causal:
    raise ValueError(f"{model} is a bidirectional encoder but the config has causal=True "
                     "(position 0 would see only itself); use config.replace(causal=False)")


class ReformerEncoder(nn.Module):
  """HF `ReformerModel`: tokens `[batch, length]` -> hidden states `[batch, length, 2 * d_model]`.

  Parameters `token_embed`, `positional`, `encoder`, `final_norm` as `ReformerLM`'s.
  Randomness as `ReformerLM` ('dropout', 'hash').
  """
  config: ReformerConfig

  @nn.compact
  def __call__(self, tokens: jnp.ndarray, mask: Optional[jnp.ndarray] = None, *,
               positions: Optional[jnp.ndarray] = None, lsh_rotations: Rotations = None,
               deterministic: Optional[bool] = None) -> jnp.ndarray:
    """The final hidden states (after `final_norm` and dropout); arguments as `ReformerLM`."""
    cfg = self.config
    check_bidirectional(cfg, "ReformerEncoder")
    deterministic = cfg.deterministic if deterministic is None else deterministic
    check_inputs(cfg, tokens, mask=mask, positions=positions)
    (x1, x2), final, final_params = encode(self, tokens, mask, positions, lsh_rotations,
                                           deterministic)
    return final(final_params, jnp.concatenate([x1, x2], axis=-1), jnp.int32(0))


class ReformerForSequenceClassification(nn.Module):
  """HF `ReformerForSequenceClassification`: the classification head on position 0.

  Only position 0's final hidden state is formed (`final_norm` and dropout of its two
  streams), so training holds no `[batch, length, 2 * d_model]` array beyond the streams.

  Attributes:
    config: model settings (`causal=False`).
    num_labels: classes.
    classifier_dropout: dropout of the head; None = `config.dropout_rate` (as HF).
  """
  config: ReformerConfig
  num_labels: int = 2
  classifier_dropout: Optional[float] = None

  @nn.compact
  def __call__(self, tokens: jnp.ndarray, mask: Optional[jnp.ndarray] = None, *,
               labels: Optional[jnp.ndarray] = None, weights: Optional[jnp.ndarray] = None,
               positions: Optional[jnp.ndarray] = None, lsh_rotations: Rotations = None,
               deterministic: Optional[bool] = None):
    """Logits `[batch, num_labels]` (float32), or with `labels` the loss sums.

    Args:
      tokens, mask, positions, lsh_rotations, deterministic: as `ReformerLM`.
      labels: `[batch]` int classes in `[0, num_labels)` (checked when concrete).
      weights: `[batch]` example weights (e.g. 0 for padding examples); needs labels.

    Returns:
      Logits, or with labels {'loss', 'weight', 'correct'} float32 sums
      (`classification_sums`).
    """
    cfg = self.config
    check_bidirectional(cfg, "ReformerForSequenceClassification")
    if isinstance(self.num_labels, bool) or not isinstance(self.num_labels, int) \
        or self.num_labels < 1:
      raise ValueError(f"num_labels must be a positive int, got {self.num_labels!r}")
    deterministic = cfg.deterministic if deterministic is None else deterministic
    check_inputs(cfg, tokens, mask=mask, positions=positions)
    batch = tokens.shape[:1]
    for name, value in (("labels", labels), ("weights", weights)):
      if value is not None and value.shape != batch:
        raise ValueError(f"{name} must be [batch] = {batch}, got {value.shape}")
    if labels is not None:
      check_ids(labels, self.num_labels, "labels", "num_labels",
                "give labels 0 .. num_labels - 1, or raise num_labels")
    if weights is not None and labels is None:
      raise ValueError("weights are only used with labels; pass labels too")
    if mask is not None and not isinstance(mask, jax.core.Tracer) \
        and not np.asarray(mask)[:, 0].all():
      raise ValueError("mask is False at position 0 of some sequences, but the head reads "
                       "position 0: pad at the end (and start each sequence with its CLS "
                       "token)")
    (x1, x2), _, (final_norm, final_rng) = encode(self, tokens, mask, positions,
                                                  lsh_rotations, deterministic)
    first = jnp.concatenate([x1[:, 0], x2[:, 0]], axis=-1)
    first = dropout(layer_norm(first, *final_norm, cfg.layer_norm_eps), cfg.dropout_rate,
                    final_rng)
    rate = cfg.dropout_rate if self.classifier_dropout is None else self.classifier_dropout
    logits = ClassificationHead(cfg.d_model, self.num_labels, rate, cfg.dtype,
                                name="classifier")(first, deterministic)
    if labels is None:
      return logits
    return classification_sums(logits, labels, weights)


class ReformerForQuestionAnswering(nn.Module):
  """HF `ReformerForQuestionAnswering`: start / end logits of an answer span per position.

  The logits are computed a chunk of `config.loss_chunk_len` positions at a time from
  the two streams (`span_logits`).
  """
  config: ReformerConfig

  @nn.compact
  def __call__(self, tokens: jnp.ndarray, mask: Optional[jnp.ndarray] = None, *,
               start_positions: Optional[jnp.ndarray] = None,
               end_positions: Optional[jnp.ndarray] = None,
               positions: Optional[jnp.ndarray] = None, lsh_rotations: Rotations = None,
               deterministic: Optional[bool] = None):
    """`(start_logits, end_logits)` `[batch, length]` (float32), or the loss sums.

    Args:
      tokens, mask, positions, lsh_rotations, deterministic: as `ReformerLM`.
      start_positions, end_positions: `[batch]` int answer boundaries (both or neither);
        with them returns {'loss', 'weight', 'correct'} float32 sums (`span_sums`:
        boundaries at or beyond the length are ignored, as HF).
    """
    cfg = self.config
    check_bidirectional(cfg, "ReformerForQuestionAnswering")
    deterministic = cfg.deterministic if deterministic is None else deterministic
    check_inputs(cfg, tokens, mask=mask, positions=positions)
    if (start_positions is None) != (end_positions is None):
      raise ValueError("give both start_positions and end_positions, or neither")
    (x1, x2), final, final_params = encode(self, tokens, mask, positions, lsh_rotations,
                                           deterministic)
    kernel, bias = DenseParams(2 * cfg.d_model, 2, (logical_axes.EMBED, logical_axes.CLASSES),
                               name="qa_outputs")()
    start, end = span_logits((x1, x2), kernel, bias, cfg.loss_chunk_len, final, final_params,
                             cfg.dtype)
    if start_positions is None:
      return start, end
    return span_sums(start, end, jnp.asarray(start_positions), jnp.asarray(end_positions))
