"""BERT-style masked language modelling (`ReformerForMaskedLM`) on language-modelling data."""
import dataclasses
import math
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax

from reformer_jax.models import ReformerConfig, ReformerForMaskedLM, bert_masking
from reformer_jax.trainer.tasks.causal_lm import CausalLM
from reformer_jax.trainer.tasks.task import Sums


@dataclasses.dataclass(frozen=True)
class MaskedLM(CausalLM):
  """BERT-style masked LM (gin: `@MaskedLM()`) on a language-modelling data source.

  `bert_masking` chooses `rate` of the real positions (80% mask id / 10% random / 10%
  kept) inside the step from the step's key, so a run is deterministic from seed and step.
  It reads the LM batches' 'inputs' (positions with weight 0 are neither masked nor
  scored). Metrics: loss (nats per masked token), masked_token_accuracy.

  Attributes:
    mask_id: the mask token's id; None = `ReformerConfig.vocab_size - 1`. It must lie at or
      above the data's ids (reserve it: vocab_size = data ids + 1). Random replacements are
      drawn from `[0, mask_id)`.
    rate: the fraction of real positions chosen (BERT: 0.15).
  """
  mask_id: Optional[int] = None
  rate: float = 0.15
  name = "masked_lm"
  description = "a masked LM"
  bidirectional = True
  hf_architecture = "ReformerForMaskedLM"
  can_generate = False
  named_in_reports = True

  def check(self, config: ReformerConfig):
    super().check(config)
    if not 0. < self.rate < 1.:
      raise ValueError(f"MaskedLM.rate must be in (0, 1), got {self.rate!r}.")
    if self.mask_id is not None and not 1 <= self.mask_id < config.vocab_size:
      raise ValueError(f"MaskedLM.mask_id={self.mask_id} must lie in [1, "
                       f"ReformerConfig.vocab_size={config.vocab_size}).")

  def resolved_mask_id(self, config: ReformerConfig) -> int:
    return config.vocab_size - 1 if self.mask_id is None else self.mask_id

  def model(self, config: ReformerConfig) -> nn.Module:
    return ReformerForMaskedLM(config)

  def masked(self, model, batch, key):
    """`batch` with `bert_masking` applied from `key`: inputs masked, weights on the chosen
    positions only."""
    mask_id = self.resolved_mask_id(model.config)
    inputs, targets, weights = bert_masking(
        key, batch["inputs"], batch["weights"] > 0, mask_id=mask_id,
        vocab_size=model.config.vocab_size, rate=self.rate, random_ids=(0, mask_id))
    return dict(batch, inputs=inputs, targets=targets, weights=weights)

  def loss_sums(self, model, params, batch, rngs, key) -> Sums:
    """Sums over the masked positions of `batch`, masked from `key`."""
    return super().loss_sums(model, params, self.masked(model, batch, key), rngs, key)

  def eval_outputs(self, model, params, batch, key):
    return self.loss_sums(model, params, batch, {"hash": key}, jax.random.fold_in(key, 1)), {}

  def summarize(self, sums: Mapping[str, Any]) -> dict:
    """loss (nats per masked token), masked_token_accuracy."""
    weight = float(sums["weight"]) or math.nan
    return {"loss": float(sums["loss"]) / weight,
            "masked_token_accuracy": float(sums["correct"]) / weight}

  def check_data(self, data, config, seq_len, names):
    if self.resolved_mask_id(config) < data.vocab_size:
      raise ValueError(f"MaskedLM's mask id {self.resolved_mask_id(config)} is one of the "
                       f"data's {data.vocab_size} token ids; reserve one: "
                       f"ReformerConfig.vocab_size = {data.vocab_size + 1} (the mask id "
                       f"defaults to vocab_size - 1).")
