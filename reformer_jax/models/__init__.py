"""Reformer models: configuration, language model and the chunked loss."""
from reformer_jax.models.config import ReformerConfig
from reformer_jax.models.loss import chunked_cross_entropy
from reformer_jax.models.reformer_lm import ReformerLM

__all__ = ["ReformerConfig", "ReformerLM", "chunked_cross_entropy"]
