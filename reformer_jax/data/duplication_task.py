"""The Reformer paper's synthetic duplication (copy) task.

A sequence is `0 w 0 w`: w is `n_symbols` tokens drawn uniformly from
1..vocab_size-1, so its length is 2 * n_symbols + 2 (1024 for the paper's
n_symbols = 511). The model reads the sequence shifted right by one (a 0 start
token in front, as trax's ShiftRight does) and predicts it:

  inputs  = [0, 0, w, 0, w[:-1]]   [batch, seq_len]
  targets = [0, w, 0, w]           [batch, seq_len]
  weights = 1 on the last n_symbols targets (the copied w), 0 elsewhere,
with seq_len = 2 * n_symbols + 2.

The first half is unpredictable noise; only the copy can be learned, and only
by attending n_symbols + 1 positions back.
"""
from typing import Iterator, Optional

import numpy as np

from reformer_jax.data.batch import Batch, batch_rng, lm_batch

_STREAMS = {"train": 0, "eval": 1, "test": 2}


class DuplicationTask:
  """Batches of the duplication task, pure functions of (seed, split, step).

  Attributes:
    n_symbols: length of w.
    vocab_size: token ids are 0 (separator) and 1..vocab_size-1 (symbols).
    seed: seed of all batches; train, eval and test use disjoint streams.
  """

  def __init__(self, n_symbols: int = 511, vocab_size: int = 128,
               seed: int = 0):
    if n_symbols < 1:
      raise ValueError(f"n_symbols must be >= 1, got {n_symbols}.")
    if vocab_size < 2:
      raise ValueError(
          f"vocab_size must be >= 2 (0 separates, 1.. are symbols), got "
          f"{vocab_size}.")
    if seed < 0:
      raise ValueError(f"seed must be >= 0, got {seed}.")
    self.n_symbols = n_symbols
    self.vocab_size = vocab_size
    self.seed = seed

  @property
  def seq_len(self) -> int:
    """The only valid model length, 2 * n_symbols + 2."""
    return 2 * self.n_symbols + 2

  def sequences(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
    """Returns [batch_size, seq_len] int32 sequences `0 w 0 w`."""
    w = rng.integers(1, self.vocab_size, size=(batch_size, self.n_symbols))
    zero = np.zeros((batch_size, 1), np.int64)
    return np.concatenate([zero, w, zero, w], axis=1).astype(np.int32)

  def _batch(self, stream: int, index: int, batch_size: int,
             seq_len: int) -> Batch:
    """Returns batch `index` of `stream` as [batch_size, seq_len] arrays."""
    if seq_len != self.seq_len:
      raise ValueError(
          f"the duplication task with n_symbols={self.n_symbols} has "
          f"sequences `0 w 0 w` of length 2 * n_symbols + 2 = {self.seq_len}, "
          f"but seq_len={seq_len}; set seq_len to {self.seq_len} or "
          f"n_symbols to seq_len // 2 - 1 (seq_len must be even and >= 4).")
    rng = batch_rng(self.seed, stream, index, batch_size)
    seqs = self.sequences(rng, batch_size)
    windows = np.concatenate([np.zeros((batch_size, 1), np.int32), seqs], 1)
    weights = np.zeros((batch_size, seq_len), np.float32)
    weights[:, self.n_symbols + 2:] = 1.
    return lm_batch(windows, weights)

  def train_batch(self, step: int, batch_size: int, seq_len: int) -> Batch:
    """Returns training batch `step` ([batch_size, seq_len] arrays)."""
    return self._batch(_STREAMS["train"], step, batch_size, seq_len)

  def eval_batches(self, batch_size: int, seq_len: int,
                   n_batches: Optional[int] = None,
                   split: str = "eval") -> Iterator[Batch]:
    """Returns an iterator of `n_batches` fixed eval (or test) batches."""
    if split not in ("eval", "test"):
      raise ValueError(f"split must be 'eval' or 'test', got {split!r}.")
    if n_batches is None or n_batches < 1:
      raise ValueError(
          f"the duplication task is unbounded: give n_batches >= 1, got "
          f"{n_batches}.")
    batches = [self._batch(_STREAMS[split], i, batch_size, seq_len)
               for i in range(n_batches)]
    return iter(batches)


def duplication(n_symbols: int = 511, vocab_size: int = 128,
                seed: int = 0) -> DuplicationTask:
  """The paper's duplication task: 0 w 0 w with |w| = 511, symbols 1..127."""
  return DuplicationTask(n_symbols=n_symbols, vocab_size=vocab_size, seed=seed)
