"""Tests for reformer_jax/data/byte_codec.py."""
import numpy as np
import pytest

from reformer_jax.data.byte_codec import ByteCodec


def test_round_trip_is_utf8_bytes():
  codec = ByteCodec()
  text = "To be, or not to be — ñ 字"
  tokens = codec.encode(text)
  assert tokens.dtype == np.int32
  np.testing.assert_array_equal(tokens, list(text.encode("utf-8")))
  assert codec.decode(tokens) == text
  assert codec.vocab_size == 256


def test_decode_replaces_bad_utf8_and_rejects_large_ids():
  codec = ByteCodec()
  assert codec.decode(np.array([104, 0xFF, 105])) == "h\ufffdi"
  with pytest.raises(ValueError, match="vocab_size"):
    codec.decode(np.array([65, 300]))
  with pytest.raises(ValueError, match="each row"):
    codec.decode(np.zeros((2, 3), np.int32))
