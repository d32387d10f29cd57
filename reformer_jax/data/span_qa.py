"""Extractive question answering (span QA) from local JSONL files, read as bytes.

One JSON object per line: {"question": ..., "context": ..., "answer": ...}, with an
optional "answer_start" (the answer's character offset in the context, as SQuAD's
`answers.answer_start`; default: its first occurrence). An example's input is
`[CLS] question [SEP] context` byte by byte (id = byte + 3; 0 padding, 1 CLS, 2 SEP;
vocab 259), and its answer the inclusive input positions `start .. end` of the answer's
bytes. Batches are dicts of numpy arrays {'inputs' [batch, seq_len] int32, 'mask'
[batch, seq_len] bool, 'start', 'end' [batch] int32, 'weights' [batch] float32 (0 for the
padding examples of a last partial eval batch, whose start and end are seq_len: ignored)}.
"""
import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from reformer_jax.data.classification import ExampleData

PAD_ID, CLS_ID, SEP_ID = 0, 1, 2
SPECIAL_IDS = 3  # byte ids start here


class SpanData(ExampleData):
  """Question-answering examples in 'train', 'eval' and 'test' splits.

  Attributes:
    vocab_size: token ids are below it.
    splits: split name -> list of (input tokens [n] int32, start, end, 'file:line').
  """

  def __init__(self, splits: Dict[str, List[Tuple[np.ndarray, int, int, str]]],
               vocab_size: int = SPECIAL_IDS + 256, seed: int = 0):
    if "train" not in splits:
      raise ValueError(f"a 'train' split is needed, got {sorted(splits)}")
    self.examples, self.vocab_size, self.seed = splits, vocab_size, seed

  def size(self, split: str) -> int:
    return len(self._split(split))

  def _split(self, split: str):
    if split not in self.examples:
      raise ValueError(f"no split {split!r}; this data has {sorted(self.examples)}")
    return self.examples[split]

  def check_fits(self, seq_len: int, seq_len_name: str = "SEQ_LEN"):
    """Raises ValueError naming the first example whose answer ends at or beyond
    `seq_len` (it would be cut off) and the length that fits every example."""
    for split, examples in self.examples.items():
      cut = [(end, where) for _, _, end, where in examples if end >= seq_len]
      if cut:
        needed = max(end for end, _ in cut) + 1
        raise ValueError(
            f"{cut[0][1]}: the answer ends at input position {cut[0][0]} ([CLS] question "
            f"[SEP] context), beyond {seq_len_name}={seq_len} ({len(cut)} such examples in "
            f"the {split!r} split); set {seq_len_name} >= {needed} or shorten the contexts.")

  def _batch(self, split: str, indices: np.ndarray, seq_len: int,
             weights: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    inputs = np.full((len(indices), seq_len), PAD_ID, np.int32)
    start = np.empty(len(indices), np.int32)
    end = np.empty(len(indices), np.int32)
    for row, i in enumerate(indices):
      tokens, start[row], end[row], _ = self._split(split)[i]
      tokens = tokens[:seq_len]
      inputs[row, :len(tokens)] = tokens
    weights = np.ones(len(indices), np.float32) if weights is None else weights
    start[weights == 0] = end[weights == 0] = seq_len
    return {"inputs": inputs, "mask": inputs != PAD_ID, "start": start, "end": end,
            "weights": weights}


def _bytes(text: str) -> np.ndarray:
  return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + SPECIAL_IDS


def _record(line: str, where: str) -> dict:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"{where}: not a JSON object ({e.msg}); write one object per line") from None
  if not isinstance(record, dict):
    raise ValueError(f"{where}: not a JSON object; write one object per line")
  return record


def _example(record: dict, where: str) -> Tuple[np.ndarray, int, int, str]:
  """(input tokens, start, end, where) of one JSONL record."""
  missing = [k for k in ("question", "context", "answer") if not isinstance(record.get(k), str)]
  if missing:
    raise ValueError(f"{where}: needs the string fields 'question', 'context' and 'answer' "
                     f"(missing or not text: {missing})")
  question, context, answer = record["question"], record["context"], record["answer"]
  if not answer:
    raise ValueError(f"{where}: the answer is empty; drop the example")
  offset = record.get("answer_start")
  if offset is None:
    offset = context.find(answer)
    if offset < 0:
      raise ValueError(f"{where}: the answer {answer!r} does not occur in the context; fix "
                       "it or give answer_start")
  elif not (isinstance(offset, int) and context[offset:offset + len(answer)] == answer):
    raise ValueError(f"{where}: answer_start={offset!r} does not point at the answer "
                     f"{answer!r} in the context; give the answer's character offset")
  prefix = np.concatenate([[CLS_ID], _bytes(question), [SEP_ID]]).astype(np.int32)
  start = len(prefix) + len(context[:offset].encode("utf-8"))
  end = start + len(answer.encode("utf-8")) - 1
  return np.concatenate([prefix, _bytes(context)]).astype(np.int32), start, end, where


def span_qa_files(train: str, eval: str, test: Optional[str] = None,  # pylint: disable=redefined-builtin
                  seed: int = 0) -> SpanData:
  """SpanData from JSONL files of {question, context, answer[, answer_start]} (test
  defaults to the eval file); `seed`: of the training batches."""
  paths = {"train": train, "eval": eval, "test": test or eval}
  splits = {}
  for name, path in paths.items():
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"no file at {path!r}")
    with open(path, encoding="utf-8") as f:
      splits[name] = [_example(_record(line, f"{path}:{i + 1}"), f"{path}:{i + 1}")
                      for i, line in enumerate(f) if line.strip()]
    if not splits[name]:
      raise ValueError(f"{path} holds no examples")
  return SpanData(splits, seed=seed)
