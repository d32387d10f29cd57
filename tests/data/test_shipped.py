"""Tests for reformer_jax/data/shipped.py and the corpus files."""
import collections
import re

import numpy as np
import pytest

from reformer_jax.data.shipped import CORPUS_PATH
from reformer_jax.data.shipped import shipped_corpus


def test_corpus_is_plain_english_text_of_the_expected_size():
  raw = CORPUS_PATH.read_bytes()
  assert 250_000 <= len(raw) <= 350_000
  text = raw.decode("utf-8")
  assert text.isascii() and "\r" not in text
  assert not re.search(r"<[a-z/!][^>]*>|\*\*|&[a-z]+;", text)  # no HTML/markup
  words = collections.Counter(re.findall(r"[a-z']+", text.lower()))
  for word in ("the", "and", "to", "of", "i", "you", "my"):
    assert words[word] > 500, word
  assert "To be, or not to be: that is the question:" in text
  assert "Is this a dagger which I see before me," in text
  assert (CORPUS_PATH.parent / "SOURCE.md").read_text().count("public domain")


def test_shipped_corpus_splits_and_batches():
  data = shipped_corpus(seed=3, eval_fraction=0.05)
  raw = np.frombuffer(CORPUS_PATH.read_bytes(), np.uint8)
  assert data.vocab_size == 256
  assert set(data.splits) == {"train", "eval"}
  assert len(data.splits["eval"]) == round(0.05 * len(raw))
  np.testing.assert_array_equal(
      np.concatenate([data.splits["train"], data.splits["eval"]]), raw)
  batch = data.train_batch(step=0, batch_size=2, seq_len=128)
  assert batch["inputs"].shape == (2, 128)
  assert data.decode(batch["targets"][0]) in raw.tobytes().decode("ascii")
  assert data.decode(data.encode("Horatio")) == "Horatio"


def test_eval_fraction_is_checked():
  with pytest.raises(ValueError, match="eval_fraction"):
    shipped_corpus(eval_fraction=1.0)
