"""Tests for reformer_jax.data.listops_task."""
import numpy as np
import pytest

from reformer_jax.data import listops_task as listops_module
from reformer_jax.data.classification import CLS_ID, PAD_ID


def _reference(expression):
  """Value of a prefix expression by recursive descent (independent of `evaluate`)."""
  def parse(i):
    s = expression[i]
    if s.isdigit():
      return int(s), i + 1
    values, i = [], i + 1
    while expression[i] != "]":
      v, i = parse(i)
      values.append(v)
    ops = {"[MIN": min, "[MAX": max, "[MED": lambda v: int(np.floor(np.median(v))),
           "[SM": lambda v: sum(v) % 10}
    return ops[s](values), i + 1
  value, end = parse(0)
  assert end == len(expression)
  return value


def test_labels_are_the_values_and_lengths_in_range():
  expressions, values = listops_module.generate(200, seed=3, min_length=5, max_length=60,
                                                max_depth=4, max_args=5)
  assert len(expressions) == 200
  assert all(5 <= len(e) <= 60 for e in expressions)
  assert [_reference(e) for e in expressions] == values.tolist()
  assert [listops_module.evaluate(e) for e in expressions] == values.tolist()
  used = {s for e in expressions for s in e}
  assert used <= set(listops_module.SYMBOLS) and set(listops_module.OPERATORS) <= used
  assert len(set(values.tolist())) == 10


def test_deterministic_from_the_seed_and_batched():
  a = listops_module.listops(seed=1, n_train=50, n_eval=10, n_test=10, min_length=5,
                             max_length=40, max_depth=4, max_args=4)
  b = listops_module.listops(seed=1, n_train=50, n_eval=10, n_test=10, min_length=5,
                             max_length=40, max_depth=4, max_args=4)
  assert (a.vocab_size, a.num_labels) == (17, 10)
  batch = a.train_batch(7, batch_size=4, seq_len=48)
  np.testing.assert_array_equal(batch["inputs"], b.train_batch(7, 4, 48)["inputs"])
  assert (batch["inputs"][:, 0] == CLS_ID).all()
  assert ((batch["inputs"] == PAD_ID) == ~batch["mask"]).all()
  assert batch["inputs"].max() < 17 and batch["labels"].shape == (4,)
  assert not np.array_equal(batch["inputs"], a.train_batch(8, 4, 48)["inputs"])
  batches = list(a.eval_batches(4, 48))
  assert len(batches) == 3 and batches[-1]["weights"].tolist() == [1., 1., 0., 0.]


def test_impossible_lengths_are_refused():
  with pytest.raises(ValueError, match="widen the range"):
    listops_module.generate(5, seed=0, min_length=50, max_length=60, max_depth=2, max_args=2,
                            max_tries=1000)
