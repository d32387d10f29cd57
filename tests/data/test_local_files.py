"""Tests for reformer_jax/data/local_files.py."""
import numpy as np
import pytest

from reformer_jax.data.local_files import local_file


def _write(tmp_path, content: bytes):
  path = tmp_path / "corpus.bin"
  path.write_bytes(content)
  return str(path)


def test_enwik8_style_split_sizes_and_bytes(tmp_path):
  content = np.random.default_rng(0).integers(0, 256, 2000, np.uint8).tobytes()
  data = local_file(_write(tmp_path, content), seed=1)
  assert data.vocab_size == 256
  sizes = {k: len(v) for k, v in data.splits.items()}
  assert sizes == {"train": 1800, "eval": 100, "test": 100}
  assert data.splits["train"].tobytes() == content[:1800]
  assert data.splits["eval"].tobytes() == content[1800:1900]
  assert data.splits["test"].tobytes() == content[1900:]


def test_custom_split_and_text_round_trip(tmp_path):
  text = "Some text, with ünïcode. " * 40
  data = local_file(_write(tmp_path, text.encode("utf-8")), split=(0.5, 0.25,
                                                                   0.25))
  raw = text.encode("utf-8")
  assert len(data.splits["train"]) == len(raw) // 2
  (batch,) = data.eval_batches(batch_size=1, seq_len=20, n_batches=1,
                               split="test")
  window = np.concatenate([batch["inputs"][0], batch["targets"][0, -1:]])
  test_start = round(0.75 * len(raw))
  assert window.astype(np.uint8).tobytes() == raw[test_start:test_start + 21]
  np.testing.assert_array_equal(
      local_file(_write(tmp_path, raw), seed=5).train_batch(4, 3, 16)["inputs"],
      local_file(_write(tmp_path, raw), seed=5).train_batch(4, 3, 16)["inputs"])


def test_missing_file_error_names_the_path_and_what_to_do(tmp_path):
  missing = tmp_path / "enwik8"
  with pytest.raises(FileNotFoundError) as info:
    local_file(str(missing))
  message = str(info.value)
  assert str(missing) in message
  assert "enwik8.zip" in message and "shipped_corpus()" in message


def test_bad_files_and_splits(tmp_path):
  with pytest.raises(ValueError, match="is empty"):
    local_file(_write(tmp_path, b""))
  path = _write(tmp_path, b"abc" * 10)
  with pytest.raises(ValueError, match="three"):
    local_file(path, split=(0.9, 0.1))
  with pytest.raises(ValueError, match="sum to 1"):
    local_file(path, split=(0.9, 0.1, 0.1))
