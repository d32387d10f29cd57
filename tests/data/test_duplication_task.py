"""Tests for reformer_jax/data/duplication_task.py."""
import numpy as np
import pytest

from reformer_jax.data.duplication_task import duplication


def test_paper_defaults():
  task = duplication()
  assert (task.n_symbols, task.vocab_size, task.seq_len) == (511, 128, 1024)
  batch = task.train_batch(step=0, batch_size=2, seq_len=1024)
  assert batch["inputs"].shape == batch["targets"].shape == (2, 1024)
  assert batch["targets"].min() == 0 and batch["targets"].max() <= 127


def test_sequences_are_0_w_0_w_shifted_and_weighted_on_the_copy():
  n = 7
  task = duplication(n_symbols=n, vocab_size=5, seed=2)
  batch = task.train_batch(step=3, batch_size=16, seq_len=2 * n + 2)
  for inputs, targets, weights in zip(batch["inputs"], batch["targets"],
                                      batch["weights"]):
    w = targets[1:n + 1]
    assert np.all((w >= 1) & (w <= 4))
    np.testing.assert_array_equal(targets, np.concatenate([[0], w, [0], w]))
    np.testing.assert_array_equal(inputs, np.concatenate([[0], targets[:-1]]))
    expected_weights = np.zeros(2 * n + 2)
    expected_weights[n + 2:] = 1  # exactly the targets of the copied w
    np.testing.assert_array_equal(weights, expected_weights)
    np.testing.assert_array_equal(targets[weights == 1], w)
  assert batch["inputs"].dtype == np.int32
  assert batch["weights"].dtype == np.float32


def test_symbols_are_uniform_over_1_to_vocab_minus_1():
  task = duplication(n_symbols=255, vocab_size=8)
  w = task.train_batch(0, 64, 512)["targets"][:, 1:256]
  counts = np.bincount(w.ravel(), minlength=8)
  assert counts[0] == 0
  np.testing.assert_allclose(counts[1:] / w.size, 1 / 7, atol=0.01)


def test_deterministic_by_seed_and_step_and_eval_stream_differs():
  a, b = duplication(n_symbols=15, seed=4), duplication(n_symbols=15, seed=4)
  np.testing.assert_array_equal(a.train_batch(9, 4, 32)["inputs"],
                                b.train_batch(9, 4, 32)["inputs"])
  assert not np.array_equal(a.train_batch(9, 4, 32)["inputs"],
                            a.train_batch(10, 4, 32)["inputs"])
  assert not np.array_equal(a.train_batch(9, 4, 32)["inputs"],
                            duplication(n_symbols=15, seed=5).train_batch(
                                9, 4, 32)["inputs"])
  evals = list(a.eval_batches(4, 32, n_batches=3))
  again = list(b.eval_batches(4, 32, n_batches=3))
  tests = list(a.eval_batches(4, 32, n_batches=3, split="test"))
  assert len(evals) == 3
  for i in range(3):
    np.testing.assert_array_equal(evals[i]["inputs"], again[i]["inputs"])
    assert not np.array_equal(evals[i]["inputs"],
                              a.train_batch(i, 4, 32)["inputs"])
    assert not np.array_equal(evals[i]["inputs"], tests[i]["inputs"])


def test_errors_say_how_to_fix():
  task = duplication(n_symbols=511)
  with pytest.raises(ValueError, match="set seq_len to 1024 or n_symbols"):
    task.train_batch(0, 2, 1023)
  with pytest.raises(ValueError, match="n_batches >= 1"):
    task.eval_batches(2, 1024)
  with pytest.raises(ValueError, match="step must be >= 0"):
    task.train_batch(-1, 2, 1024)
  with pytest.raises(ValueError, match="vocab_size must be >= 2"):
    duplication(vocab_size=1)
