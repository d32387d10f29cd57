"""Tests for reformer_jax.models.masked_lm."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.models import ReformerConfig, ReformerForMaskedLM, bert_masking

CONFIG = ReformerConfig(vocab_size=16, d_model=16, d_ff=32, n_heads=2, d_head=4, n_layers=2,
                        attention_types=("local", "full"), causal=False, max_len=16,
                        local_chunk_len=4, local_n_chunks_after=1, loss_chunk_len=4,
                        deterministic=True)


def test_bert_masking_rates_padding_and_seed():
  tokens = jax.random.randint(jax.random.PRNGKey(0), (64, 256), 2, 16)
  mask = jnp.arange(256)[None, :] < 200
  inputs, targets, weights = bert_masking(jax.random.PRNGKey(1), tokens, mask, mask_id=1,
                                          vocab_size=16, random_ids=(2, 16))
  inputs, weights, tokens = (np.asarray(t) for t in (inputs, weights, tokens))
  chosen = weights > 0
  np.testing.assert_array_equal(np.asarray(targets), tokens)
  assert not chosen[:, 200:].any()
  assert abs(chosen[:, :200].mean() - 0.15) < 0.01
  assert (inputs[~chosen] == tokens[~chosen]).all()
  as_mask = (inputs == 1)[chosen].mean()
  replaced = ((inputs != 1) & (inputs != tokens))[chosen].mean()
  assert abs(as_mask - 0.8) < 0.02 and 0.07 < replaced < 0.115  # 10% random (1/14 equal)
  again = bert_masking(jax.random.PRNGKey(1), jnp.asarray(tokens), mask, mask_id=1,
                       vocab_size=16, random_ids=(2, 16))[0]
  np.testing.assert_array_equal(np.asarray(again), inputs)
  with pytest.raises(ValueError, match="reserve an id for the mask token"):
    bert_masking(jax.random.PRNGKey(1), jnp.asarray(tokens), mask_id=16, vocab_size=16)


def test_masked_lm_loss_counts_only_masked_positions():
  """The chunked loss with weights equals cross-entropy of the logits at masked positions."""
  model = ReformerForMaskedLM(CONFIG)
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 16), 2, 16)
  inputs, targets, weights = bert_masking(jax.random.PRNGKey(3), tokens, mask_id=1,
                                          vocab_size=16, rate=0.3)
  params = model.init(jax.random.PRNGKey(4), inputs)["params"]
  logits = np.asarray(model.apply({"params": params}, inputs), np.float64)
  sums = model.apply({"params": params}, inputs, targets=targets, weights=weights)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  picked = np.take_along_axis(log_probs, np.asarray(targets)[..., None], -1)[..., 0]
  w = np.asarray(weights)
  assert w.sum() > 0
  np.testing.assert_allclose(float(sums["loss"]), -(picked * w).sum(), rtol=1e-5)
  assert float(sums["weight"]) == w.sum()
  # Bidirectional: position 0's logits depend on the last token.
  changed = np.asarray(model.apply({"params": params}, inputs.at[:, -1].add(1) % 16))
  assert np.abs(changed[:, 0] - logits[:, 0]).max() > 1e-4


def test_causal_config_refused():
  with pytest.raises(ValueError, match="causal=False"):
    ReformerForMaskedLM(CONFIG.replace(causal=True))
