"""Tests for reformer_jax.data.span_qa: inputs, answer positions, batches, bad files."""
import json
import re

import numpy as np
import pytest

from reformer_jax.data import span_qa


def _write(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def test_answer_positions_point_at_the_answers_bytes(tmp_path):
  records = [{"question": "who?", "context": "é Ann met Bob", "answer": "Bob"},
             {"question": "q", "context": "a b a", "answer": "a", "answer_start": 4}]
  path = _write(tmp_path / "qa.jsonl", records)
  data = span_qa.span_qa_files(path, path)
  for record, (tokens, start, end, where) in zip(records, data.examples["train"]):
    assert tokens[0] == span_qa.CLS_ID and where.endswith(f":{records.index(record) + 1}")
    answer = bytes(int(t) - span_qa.SPECIAL_IDS for t in tokens[start:end + 1])
    assert answer.decode("utf-8") == record["answer"]
  assert data.examples["train"][1][1] == 1 + 1 + 1 + 4   # CLS q SEP, then "a b " (4 bytes)
  batch = next(data.eval_batches(4, 24))
  assert batch["inputs"].shape == (4, 24) and list(batch["weights"]) == [1, 1, 0, 0]
  assert list(batch["start"][2:]) == [24, 24]            # padding examples: ignored ends
  np.testing.assert_array_equal(batch["mask"], batch["inputs"] != span_qa.PAD_ID)
  np.testing.assert_array_equal(data.train_batch(3, 2, 24)["inputs"],
                                data.train_batch(3, 2, 24)["inputs"])


@pytest.mark.parametrize("record, message", [
    ({"question": "q", "context": "abc", "answer": "x"}, "does not occur in the context"),
    ({"question": "q", "context": "abc", "answer": "b", "answer_start": 0},
     "answer_start=0 does not point at the answer"),
    ({"question": "q", "context": "abc", "answer": ""}, "the answer is empty"),
    ({"question": "q", "answer": "a"}, "missing or not text: ['context']"),
])
def test_bad_records_name_the_file_and_line(tmp_path, record, message):
  path = _write(tmp_path / "qa.jsonl", [{"question": "q", "context": "a", "answer": "a"},
                                        record])
  with pytest.raises(ValueError, match=re.escape(message)) as info:
    span_qa.span_qa_files(path, path)
  assert str(info.value).startswith(f"{path}:2: ")


def test_an_answer_beyond_seq_len_names_the_length_that_fits(tmp_path):
  path = _write(tmp_path / "qa.jsonl", [{"question": "q", "context": "x" * 30 + "ans",
                                         "answer": "ans"}])
  data = span_qa.span_qa_files(path, path)
  data.check_fits(36)
  with pytest.raises(ValueError, match=r"qa.jsonl:1: the answer ends at input position 35 .*"
                                       r"set SEQ_LEN >= 36"):
    data.check_fits(35)
