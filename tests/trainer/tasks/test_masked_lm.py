"""Tests for reformer_jax/trainer/tasks/masked_lm.py: masking from the step's key."""
import jax
import numpy as np

from reformer_jax.trainer import tasks


def test_masked_lm_masks_from_the_key_and_scores_only_masked_positions(encoder_config):
  task = tasks.MaskedLM()                                # mask id: vocab_size - 1 = 16
  model = task.model(encoder_config)
  tokens = np.random.default_rng(1).integers(0, 16, (4, 64)).astype(np.int32)
  weights = np.ones((4, 64), np.float32)
  weights[3] = 0.                                        # a padding example
  batch = {"inputs": tokens, "targets": tokens, "weights": weights}
  mask = jax.jit(lambda key: task.masked(model, batch, key))
  masked, again, other = (mask(jax.random.PRNGKey(k)) for k in (3, 3, 4))
  chosen = np.asarray(masked["weights"]) > 0
  np.testing.assert_array_equal(masked["inputs"], again["inputs"])
  assert np.any(np.asarray(masked["inputs"]) != np.asarray(other["inputs"]))
  assert not chosen[3].any() and 0.05 < chosen[:3].mean() < 0.3
  np.testing.assert_array_equal(masked["targets"], tokens)
  assert np.all(np.asarray(masked["inputs"])[~chosen] == tokens[~chosen])
  assert np.mean(np.asarray(masked["inputs"])[chosen] == 16) > 0.5   # 80%: the mask id
