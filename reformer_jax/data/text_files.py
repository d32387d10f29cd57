"""Sequence classification from local (text, label) files: JSONL, CSV or TSV, read as bytes.

Texts are UTF-8 encoded and fed byte by byte (id = byte + 2; 0 padding, 1 CLS; vocab 258).
Labels are ints in `[0, num_labels)`, or strings mapped to `label_names` (default: the
sorted distinct labels of the train file).
"""
import csv
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from reformer_jax.data.classification import SPECIAL_IDS, ClassificationData

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}


def _rows(path: str, text_field: str, label_field: str) -> List[Tuple[str, object, int]]:
  """(text, label, line number) of every record of `path`."""
  kind = FORMATS.get(os.path.splitext(path)[1].lower())
  if kind is None:
    raise ValueError(f"{path}: unknown format; name the file .jsonl, .csv or .tsv")
  rows = []
  with open(path, newline="", encoding="utf-8") as f:
    if kind == "jsonl":
      records = ((i + 1, json.loads(line)) for i, line in enumerate(f) if line.strip())
    else:
      reader = csv.DictReader(f, delimiter="," if kind == "csv" else "\t")
      records = ((i + 2, r) for i, r in enumerate(reader))  # line 1: the header
    for line, record in records:
      if text_field not in record or label_field not in record:
        raise ValueError(f"{path}:{line}: needs the fields {text_field!r} and "
                         f"{label_field!r}, got {sorted(record)}; set text_field / "
                         "label_field")
      rows.append((record[text_field], record[label_field], line))
  if not rows:
    raise ValueError(f"{path} holds no examples")
  return rows


def _label_id(label, names: Optional[Sequence[str]], num_labels: int, where: str) -> int:
  if names is not None:
    if str(label) not in names:
      raise ValueError(f"{where}: label {label!r} is not one of label_names {list(names)}")
    return list(names).index(str(label))
  try:
    value = int(label)
  except (TypeError, ValueError):
    raise ValueError(f"{where}: label {label!r} is not an int; give label_names to map "
                     "string labels") from None
  if not 0 <= value < num_labels:
    raise ValueError(f"{where}: label {value} is outside [0, num_labels={num_labels}); fix "
                     "the label or raise num_labels")
  return value


def text_label_files(train: str, eval: str, test: Optional[str] = None, *,  # pylint: disable=redefined-builtin
                     num_labels: Optional[int] = None,
                     label_names: Optional[Sequence[str]] = None, text_field: str = "text",
                     label_field: str = "label", seed: int = 0) -> ClassificationData:
  """ClassificationData from (text, label) files (test defaults to the eval file).

  Args:
    train, eval, test: paths of .jsonl (one JSON object per line), .csv or .tsv (with a
      header) files.
    num_labels: classes of int labels; default: the largest train label + 1 (or the
      number of `label_names`).
    label_names: names of string labels, in label order; default for string labels: the
      sorted distinct train labels.
    text_field, label_field: the field / column names.
    seed: seed of the training batches.
  """
  paths = {"train": train, "eval": eval, "test": test or eval}
  for path in set(paths.values()):
    if not os.path.isfile(os.path.expanduser(path)):
      raise FileNotFoundError(f"no file at {path!r}")
  rows = {name: _rows(os.path.expanduser(p), text_field, label_field)
          for name, p in paths.items()}
  train_labels = [label for _, label, _ in rows["train"]]
  if label_names is None and any(isinstance(v, str) and not v.lstrip("-").isdigit()
                                 for v in train_labels):
    label_names = sorted({str(v) for v in train_labels})
  if num_labels is None:
    num_labels = (len(label_names) if label_names is not None
                  else max(int(v) for v in train_labels) + 1)
  splits: Dict[str, list] = {}
  labels: Dict[str, list] = {}
  for name, records in rows.items():
    splits[name], labels[name] = [], []
    for text, label, line in records:
      where = f"{paths[name]}:{line}"
      data = str(text).encode("utf-8")
      if not data:
        raise ValueError(f"{where}: the text is empty; drop the example")
      splits[name].append(np.frombuffer(data, np.uint8).astype(np.int32) + SPECIAL_IDS)
      labels[name].append(_label_id(label, label_names, num_labels, where))
  return ClassificationData(splits, labels, vocab_size=SPECIAL_IDS + 256,
                            num_labels=num_labels, seed=seed)
