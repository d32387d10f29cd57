"""A tiny bidirectional model for the task tests."""
import pytest

from reformer_jax.models import ReformerConfig


@pytest.fixture
def encoder_config():
  """One local-attention layer of width 16, vocabulary 17, deterministic."""
  return ReformerConfig(vocab_size=17, d_model=16, d_ff=32, n_heads=2, d_head=8, n_layers=1,
                        attention_types=("local",), local_chunk_len=8, positional="none",
                        causal=False, local_n_chunks_after=1, deterministic=True)
