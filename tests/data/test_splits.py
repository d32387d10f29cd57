"""Tests for reformer_jax/data/splits.py."""
import numpy as np
import pytest

from reformer_jax.data.splits import contiguous_split


def test_enwik8_style_sizes_and_contents():
  tokens = np.arange(1000)
  train, eval_, test = contiguous_split(tokens, (0.9, 0.05, 0.05))
  assert (len(train), len(eval_), len(test)) == (900, 50, 50)
  np.testing.assert_array_equal(np.concatenate([train, eval_, test]), tokens)
  assert eval_[0] == 900 and test[0] == 950


def test_rounding_keeps_every_token():
  pieces = contiguous_split(np.arange(7), (0.5, 0.25, 0.25))
  assert sum(len(p) for p in pieces) == 7
  assert [len(p) for p in pieces] == [4, 1, 2]  # bounds round(3.5), round(5.25)


@pytest.mark.parametrize("fractions", [(0.9, 0.05), (0.5, -0.1, 0.6), ()])
def test_rejects_bad_fractions(fractions):
  with pytest.raises(ValueError, match="split fractions"):
    contiguous_split(np.arange(10), fractions)
