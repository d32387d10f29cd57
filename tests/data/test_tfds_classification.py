"""Tests for reformer_jax.data.tfds_classification, offline with tfds.testing.mock_data."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from reformer_jax.data.classification import CLS_ID
from reformer_jax.data.tfds_classification import tfds_classification


def test_imdb_reviews_mocked():
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    data = tfds_classification("imdb_reviews")
    texts = tfds.data_source("imdb_reviews", split="test")
    first_text, first_label = texts[0]["text"], int(texts[0]["label"])
  assert (data.vocab_size, data.num_labels, data.size("train"), data.size("eval")) == (
      258, 2, 6, 6)
  batch = next(data.eval_batches(2, 16))
  want = [CLS_ID] + [b + 2 for b in first_text.encode("utf-8")[:15]]
  np.testing.assert_array_equal(batch["inputs"][0, :len(want)], want)
  assert batch["labels"][0] == first_label and set(batch["labels"]) <= {0, 1}


def test_missing_feature_is_named():
  with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
    with pytest.raises(ValueError, match="set text_feature"):
      tfds_classification("imdb_reviews", text_feature="sentence")
