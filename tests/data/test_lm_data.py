"""Tests for reformer_jax/data/lm_data.py."""
import numpy as np
import pytest

from reformer_jax.data.lm_data import LMData


class _IdCodec:
  """A large vocabulary, so that token == position in the test streams."""
  vocab_size = 10_000

  def encode(self, text):
    return np.array([int(t) for t in text.split()], np.int32)

  def decode(self, tokens):
    return " ".join(str(t) for t in tokens)


def _positional_data(n_train=500, n_eval=103, seed=0):
  """Streams whose token at position p is p (+ offset for eval)."""
  return LMData({"train": np.arange(n_train, dtype=np.int32),
                 "eval": np.arange(n_eval, dtype=np.int32) + 5000},
                codec=_IdCodec(), seed=seed)


def test_train_batches_are_crops_with_shifted_targets():
  data = _positional_data()
  batch = data.train_batch(step=7, batch_size=16, seq_len=32)
  starts = batch["inputs"][:, 0]
  expected = starts[:, None] + np.arange(33)
  np.testing.assert_array_equal(batch["inputs"], expected[:, :-1])
  np.testing.assert_array_equal(batch["targets"], expected[:, 1:])
  assert np.all(starts >= 0) and np.all(starts + 32 < 500)
  np.testing.assert_array_equal(batch["weights"], np.ones((16, 32)))


def test_train_batch_is_a_function_of_seed_and_step():
  a, b = _positional_data(), _positional_data()
  for step in (0, 1, 12345):
    for key in ("inputs", "targets", "weights"):
      np.testing.assert_array_equal(a.train_batch(step, 8, 16)[key],
                                    b.train_batch(step, 8, 16)[key])
  assert not np.array_equal(a.train_batch(0, 8, 16)["inputs"],
                            a.train_batch(1, 8, 16)["inputs"])
  other_seed = _positional_data(seed=1)
  assert not np.array_equal(a.train_batch(3, 8, 16)["inputs"],
                            other_seed.train_batch(3, 8, 16)["inputs"])


def test_resumed_run_sees_the_uninterrupted_batches():
  uninterrupted = _positional_data()
  full = [uninterrupted.train_batch(s, 4, 16)["inputs"] for s in range(10)]
  first_run = _positional_data()
  for s in range(6):
    first_run.train_batch(s, 4, 16)
  resumed = _positional_data()  # fresh process, restarts at step 6
  for s in range(6, 10):
    np.testing.assert_array_equal(resumed.train_batch(s, 4, 16)["inputs"],
                                  full[s])


def test_full_eval_scores_every_target_exactly_once():
  data = _positional_data(n_eval=103)  # 102 targets, seq_len 10: 10 + tail
  batches = list(data.eval_batches(batch_size=4, seq_len=10))
  assert len(batches) == 3  # 11 windows padded to 12 rows
  targets = np.concatenate([b["targets"].ravel() for b in batches])
  weights = np.concatenate([b["weights"].ravel() for b in batches])
  scored = np.sort(targets[weights == 1])
  np.testing.assert_array_equal(scored, 5000 + np.arange(1, 103))
  for b in batches:
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
  assert batches[0]["inputs"][0, 0] == 5000


def test_full_eval_without_tail():
  data = _positional_data(n_eval=21)  # 20 targets = 2 windows of 10
  (batch,) = data.eval_batches(batch_size=2, seq_len=10)
  np.testing.assert_array_equal(batch["weights"], np.ones((2, 10)))
  np.testing.assert_array_equal(batch["inputs"][:, 0], [5000, 5010])


def test_evenly_spaced_eval_is_deterministic():
  data = _positional_data(n_eval=103)
  first = list(data.eval_batches(batch_size=3, seq_len=10, n_batches=2))
  second = list(data.eval_batches(batch_size=3, seq_len=10, n_batches=2))
  assert len(first) == 2
  starts = np.concatenate([b["inputs"][:, 0] for b in first]) - 5000
  np.testing.assert_array_equal(starts, np.round(np.linspace(0, 92, 6)))
  for x, y in zip(first, second):
    np.testing.assert_array_equal(x["inputs"], y["inputs"])


def test_eval_of_other_splits():
  data = _positional_data()
  (batch,) = data.eval_batches(1, 8, n_batches=1, split="train")
  assert batch["inputs"][0, 0] == 0
  with pytest.raises(ValueError, match=r"no 'test' split; it has \['eval', "
                     r"'train'\]"):
    data.eval_batches(1, 8, split="test")


def test_short_split_error_says_how_long_and_what_to_reduce():
  data = _positional_data(n_eval=50)
  with pytest.raises(ValueError, match="'eval' split has 50 tokens.*reduce "
                     "seq_len to at most 49"):
    data.eval_batches(batch_size=2, seq_len=64)
  with pytest.raises(ValueError, match="'train' split has 500 tokens"):
    data.train_batch(0, 2, 500)


def test_bad_arguments():
  data = _positional_data()
  with pytest.raises(ValueError, match="step must be >= 0"):
    data.train_batch(-1, 2, 8)
  with pytest.raises(ValueError, match="batch_size"):
    data.train_batch(0, 0, 8)
  with pytest.raises(ValueError, match="n_batches"):
    data.eval_batches(2, 8, n_batches=0)
  with pytest.raises(ValueError, match="unknown split 'valid'"):
    LMData({"valid": np.arange(10)})
  with pytest.raises(ValueError, match=r"outside \[0, 256\)"):
    LMData({"train": np.array([1, 256], np.int32)})


def test_byte_codec_is_the_default():
  data = LMData({"train": np.frombuffer(b"hello world", np.uint8)})
  assert data.vocab_size == 256
  np.testing.assert_array_equal(data.encode("hi"), [104, 105])
  assert data.decode(data.train_batch(0, 1, 10)["inputs"][0]) == "hello worl"
