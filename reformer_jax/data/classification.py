"""Sequence-classification data: token sequences with one label each, batched and padded.

Every sequence starts with `CLS_ID` (the position the classification head reads) and is
padded with `PAD_ID` (mask False) or cut to `seq_len`. Batches are dicts of numpy arrays
{'inputs' [batch, seq_len] int32, 'mask' [batch, seq_len] bool, 'labels' [batch] int32,
'weights' [batch] float32 (0 for the padding examples of a last partial eval batch)}.
"""
from typing import Dict, Iterator, Optional, Sequence

import numpy as np

PAD_ID, CLS_ID = 0, 1
SPECIAL_IDS = 2  # byte or symbol ids start here


class ExampleData:
  """Batches of whole examples: a subclass gives `seed`, `size(split)` and
  `_batch(split, indices, seq_len, weights=None)`."""

  def train_batch(self, step: int, batch_size: int, seq_len: int) -> Dict[str, np.ndarray]:
    """Batch `step` of training: examples drawn with replacement, a pure function of
    (seed, step)."""
    rng = np.random.default_rng([self.seed, step])
    indices = rng.integers(0, self.size("train"), batch_size)
    return self._batch("train", indices, seq_len)

  def eval_batches(self, batch_size: int, seq_len: int, n_batches: Optional[int] = None,
                   split: str = "eval") -> Iterator[Dict[str, np.ndarray]]:
    """The examples of `split` in order (all, or the first `n_batches` batches); the last
    batch is filled with copies of example 0 at weight 0."""
    size = self.size(split)
    for start in range(0, size, batch_size):
      if n_batches is not None and start // batch_size >= n_batches:
        return
      indices = np.arange(start, min(start + batch_size, size))
      weights = np.ones(batch_size, np.float32)
      weights[len(indices):] = 0.
      indices = np.concatenate([indices, np.zeros(batch_size - len(indices), np.int64)])
      yield self._batch(split, indices, seq_len, weights)


class ClassificationData(ExampleData):
  """Labelled token sequences in 'train', 'eval' and 'test' splits.

  Attributes:
    vocab_size: token ids are below it (0 padding, 1 CLS).
    num_labels: labels are in `[0, num_labels)`.
  """

  def __init__(self, splits: Dict[str, Sequence[np.ndarray]],
               labels: Dict[str, Sequence[int]], vocab_size: int, num_labels: int,
               seed: int = 0):
    """`splits[name]`: token-id arrays (without CLS); `labels[name]`: their labels."""
    if "train" not in splits:
      raise ValueError(f"a 'train' split is needed, got {sorted(splits)}")
    self.vocab_size, self.num_labels, self.seed = vocab_size, num_labels, seed
    self._splits, self._labels = {}, {}
    for name, sequences in splits.items():
      y = np.asarray(labels[name], np.int32)
      if len(y) != len(sequences) or not len(y):
        raise ValueError(f"split {name!r} has {len(sequences)} sequences and {len(y)} labels; "
                         "give one label per sequence and at least one sequence")
      bad = np.flatnonzero((y < 0) | (y >= num_labels))
      if bad.size:
        raise ValueError(f"split {name!r}: example {bad[0]} has label {y[bad[0]]} outside "
                         f"[0, num_labels={num_labels}); fix the label or raise num_labels")
      empty = [i for i, s in enumerate(sequences) if len(s) == 0]
      if empty:
        raise ValueError(f"split {name!r}: example {empty[0]} is empty; drop empty texts")
      self._splits[name] = [np.asarray(s, np.int32) for s in sequences]
      self._labels[name] = y

  def size(self, split: str) -> int:
    return len(self._labels[self._check_split(split)])

  def label_counts(self, split: str) -> np.ndarray:
    """Examples per label `[num_labels]` (the majority-class baseline is max / sum)."""
    return np.bincount(self._labels[self._check_split(split)], minlength=self.num_labels)

  def _check_split(self, split: str) -> str:
    if split not in self._splits:
      raise ValueError(f"no split {split!r}; this data has {sorted(self._splits)}")
    return split

  def _batch(self, split: str, indices: np.ndarray, seq_len: int,
             weights: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    if seq_len < 2:
      raise ValueError(f"seq_len must be >= 2 (CLS and one token), got {seq_len}")
    inputs = np.full((len(indices), seq_len), PAD_ID, np.int32)
    for row, i in enumerate(indices):
      tokens = self._splits[split][i][:seq_len - 1]
      inputs[row, 0], inputs[row, 1:1 + len(tokens)] = CLS_ID, tokens
    return {"inputs": inputs, "mask": inputs != PAD_ID,
            "labels": self._labels[split][indices],
            "weights": np.ones(len(indices), np.float32) if weights is None else weights}
