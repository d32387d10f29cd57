"""Tests for reformer_jax.data.text_files and reformer_jax.data.classification."""
import json

import numpy as np
import pytest

from reformer_jax.data.classification import CLS_ID
from reformer_jax.data.text_files import text_label_files


def _write(tmp_path, name, rows):
  path = tmp_path / name
  if name.endswith(".jsonl"):
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
  else:
    sep = "," if name.endswith(".csv") else "\t"
    path.write_text("text" + sep + "label\n" + "".join(f"{t}{sep}{y}\n" for t, y in rows))
  return str(path)


@pytest.mark.parametrize("ext", [".jsonl", ".csv", ".tsv"])
def test_reads_texts_as_bytes_with_labels(tmp_path, ext):
  train = _write(tmp_path, "train" + ext, [("good film", 1), ("bad", 0), ("été", 2)])
  eval_ = _write(tmp_path, "eval" + ext, [("fine", 1)])
  data = text_label_files(train, eval_)
  assert (data.vocab_size, data.num_labels, data.size("test")) == (258, 3, 1)
  batch = next(data.eval_batches(2, 8, split="train"))
  np.testing.assert_array_equal(batch["inputs"][0], [CLS_ID] + [b + 2 for b in b"good fi"])
  np.testing.assert_array_equal(batch["inputs"][1, :4], [CLS_ID] + [b + 2 for b in b"bad"])
  assert batch["mask"][1].tolist() == [True] * 4 + [False] * 4
  assert batch["labels"].tolist() == [1, 0]
  np.testing.assert_array_equal(data.label_counts("train"), [1, 1, 1])


def test_string_labels_are_mapped_in_sorted_order(tmp_path):
  train = _write(tmp_path, "t.jsonl", [("a", "pos"), ("b", "neg"), ("c", "pos")])
  data = text_label_files(train, train)
  assert data.num_labels == 2
  assert next(data.eval_batches(3, 4))["labels"].tolist() == [1, 0, 1]


def test_bad_input_one_clear_error(tmp_path):
  good = _write(tmp_path, "good.jsonl", [("a", 0), ("b", 1)])
  with pytest.raises(ValueError, match=r"bad.jsonl:2: label 5 is outside \[0, num_labels=2\)"):
    text_label_files(good, _write(tmp_path, "bad.jsonl", [("a", 0), ("b", 5)]))
  with pytest.raises(ValueError, match=r"empty.csv:3: the text is empty"):
    text_label_files(good, _write(tmp_path, "empty.csv", [("a", 0), ("", 1)]))
  with pytest.raises(ValueError, match="needs the fields 'text' and 'label'"):
    (tmp_path / "other.jsonl").write_text('{"sentence": "a", "label": 0}\n')
    text_label_files(good, str(tmp_path / "other.jsonl"))
  with pytest.raises(ValueError, match="name the file .jsonl, .csv or .tsv"):
    (tmp_path / "x.txt").write_text("a")
    text_label_files(str(tmp_path / "x.txt"), good)
