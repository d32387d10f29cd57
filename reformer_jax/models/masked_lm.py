"""Masked language modelling: HF's `ReformerForMaskedLM` and BERT-style input masking.

HF's `ReformerForMaskedLM` has the layout of `ReformerModelWithLMHead` (the same
parameter names) with bidirectional attention, so here it is `ReformerLM` with
`causal=False`: the loss is the chunked fused projection + cross-entropy of
`ReformerLM(targets=...)` with `weights` on the masked positions only, and no
`[batch, length, vocab]` logits are formed in training.
"""
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from reformer_jax.models.reformer_encoder import check_bidirectional
from reformer_jax.models.reformer_lm import ReformerLM


class ReformerForMaskedLM(ReformerLM):
  """`ReformerLM` that requires `config.causal=False`; call it as `ReformerLM` with
  `targets` = the original tokens and `weights` = the masked positions (`bert_masking`)."""

  def __post_init__(self):
    check_bidirectional(self.config, "ReformerForMaskedLM")
    super().__post_init__()


def bert_masking(rng: jax.Array, tokens: jnp.ndarray, mask: Optional[jnp.ndarray] = None, *,
                 mask_id: int, vocab_size: int, rate: float = 0.15,
                 random_ids: Tuple[int, int] = (0, None)
                 ) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """BERT's masking (Devlin et al. 2019) of tokens `[batch, length]`.

  Each real position (`mask` True; None = all) is chosen with probability `rate`; a chosen
  position's input becomes `mask_id` (80%), a random id in `random_ids` = `[low, high)`
  (10%; high None = vocab_size) or stays (10%).

  Returns:
    `(inputs, targets, weights)` `[batch, length]`: the masked inputs, the original tokens
    and float32 weights 1 on the chosen positions (0 elsewhere), for
    `ReformerForMaskedLM(...)(inputs, mask, targets=targets, weights=weights)`.
  """
  if not 0. < rate < 1.:
    raise ValueError(f"rate must be in (0, 1), got {rate!r}")
  low, high = random_ids[0], vocab_size if random_ids[1] is None else random_ids[1]
  if not 0 <= mask_id < vocab_size or not 0 <= low < high <= vocab_size:
    raise ValueError(f"mask_id {mask_id} and random_ids [{low}, {high}) must lie in "
                     f"[0, vocab_size={vocab_size}); reserve an id for the mask token")
  real = jnp.ones(tokens.shape, bool) if mask is None else mask.astype(bool)
  choose, how, ids = jax.random.split(rng, 3)
  chosen = (jax.random.uniform(choose, tokens.shape) < rate) & real
  kind = jax.random.uniform(how, tokens.shape)
  random_tokens = jax.random.randint(ids, tokens.shape, low, high, tokens.dtype)
  inputs = jnp.where(chosen & (kind < 0.8), jnp.asarray(mask_id, tokens.dtype), tokens)
  inputs = jnp.where(chosen & (kind >= 0.8) & (kind < 0.9), random_tokens, inputs)
  return inputs, tokens, chosen.astype(jnp.float32)
