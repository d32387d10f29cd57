"""Reformer models: configuration, language model, encoders with task heads, the chunked loss."""
from reformer_jax.models.config import ReformerConfig
from reformer_jax.models.loss import chunked_cross_entropy
from reformer_jax.models.masked_lm import ReformerForMaskedLM, bert_masking
from reformer_jax.models.reformer_encoder import (ReformerEncoder, ReformerForQuestionAnswering,
                                                  ReformerForSequenceClassification)
from reformer_jax.models.reformer_lm import ReformerLM

__all__ = ["ReformerConfig", "ReformerEncoder", "ReformerForMaskedLM",
           "ReformerForQuestionAnswering", "ReformerForSequenceClassification", "ReformerLM",
           "bert_masking", "chunked_cross_entropy"]
