"""Tests for reformer_jax/data/batch.py."""
import numpy as np
import pytest

from reformer_jax.data.batch import lm_batch


def test_targets_are_inputs_shifted_by_one():
  windows = np.random.default_rng(0).integers(0, 256, size=(3, 9))
  batch = lm_batch(windows)
  np.testing.assert_array_equal(batch["inputs"], windows[:, :8])
  np.testing.assert_array_equal(batch["targets"], windows[:, 1:])
  np.testing.assert_array_equal(batch["inputs"][:, 1:],
                                batch["targets"][:, :-1])
  np.testing.assert_array_equal(batch["weights"], np.ones((3, 8)))
  assert batch["inputs"].dtype == np.int32
  assert batch["targets"].dtype == np.int32
  assert batch["weights"].dtype == np.float32


def test_weights_pass_through_and_are_checked():
  weights = np.array([[0, 1, 1]], np.float64)
  batch = lm_batch(np.arange(4)[None], weights)
  np.testing.assert_array_equal(batch["weights"], weights)
  assert batch["weights"].dtype == np.float32
  with pytest.raises(ValueError, match=r"targets' shape \(1, 3\)"):
    lm_batch(np.arange(4)[None], np.ones((1, 4)))


def test_rejects_windows_too_short():
  with pytest.raises(ValueError, match="seq_len \\+ 1"):
    lm_batch(np.zeros((2, 1), np.int32))
