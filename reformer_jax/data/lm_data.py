"""Language-modelling data over one token stream per split."""
from typing import Iterator, Mapping, Optional

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from reformer_jax.data.batch import Batch, lm_batch
from reformer_jax.data.byte_codec import ByteCodec

SPLITS = ("train", "eval", "test")


class LMData:
  """Random training crops and fixed eval windows of [length] token streams.

  Training batches are a pure function of (seed, step), so a run resumed at
  step k sees exactly the batches an uninterrupted run sees from step k on.
  Eval batches are a pure function of their arguments.

  Attributes:
    splits: dict split name ('train', 'eval', 'test') -> [length] tokens.
    codec: text <-> token codec with `vocab_size`, `encode`, `decode`.
    seed: seed of the training crops.
  """

  def __init__(self, splits: Mapping[str, np.ndarray], codec=None,
               seed: int = 0):
    """Wraps the token streams.

    Args:
      splits: split name -> [length] integer tokens (a numpy array or memmap;
        it is not copied). Names must come from ('train', 'eval', 'test').
      codec: the codec the tokens were made with; default ByteCodec().
      seed: non-negative seed of the training crops.
    """
    self.codec = ByteCodec() if codec is None else codec
    if seed < 0:
      raise ValueError(f"seed must be >= 0, got {seed}.")
    self.seed = int(seed)
    self.splits = {}
    for name, tokens in splits.items():
      if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; use one of {SPLITS}.")
      if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(
            f"split {name!r} must be a 1-D integer token array, got "
            f"{tokens.dtype} of shape {tokens.shape}.")
      if (tokens.size and np.iinfo(tokens.dtype).max >= self.vocab_size and
          (tokens.min() < 0 or tokens.max() >= self.vocab_size)):
        raise ValueError(
            f"split {name!r} has tokens outside [0, {self.vocab_size}).")
      self.splits[name] = tokens

  @property
  def vocab_size(self) -> int:
    return self.codec.vocab_size

  def encode(self, text: str) -> np.ndarray:
    """Returns the [length] int32 tokens of `text`."""
    return self.codec.encode(text)

  def decode(self, tokens) -> str:
    """Returns the text of [length] tokens."""
    return self.codec.decode(tokens)

  def _windows(self, split: str, batch_size: int, seq_len: int) -> np.ndarray:
    """Returns a [n_windows, seq_len + 1] view of all windows of `split`."""
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if split not in self.splits:
      raise ValueError(
          f"this data has no {split!r} split; it has {sorted(self.splits)}.")
    if seq_len < 1:
      raise ValueError(f"seq_len must be >= 1, got {seq_len}.")
    tokens = self.splits[split]
    if len(tokens) < seq_len + 1:
      raise ValueError(
          f"the {split!r} split has {len(tokens)} tokens, fewer than "
          f"seq_len + 1 = {seq_len + 1}; reduce seq_len to at most "
          f"{len(tokens) - 1} or give the split more data.")
    return sliding_window_view(tokens, seq_len + 1)

  def train_batch(self, step: int, batch_size: int, seq_len: int) -> Batch:
    """Returns training batch `step`: random crops of the 'train' split.

    Args:
      step: non-negative step number; with the seed it fixes the crops.
      batch_size: number of crops.
      seq_len: model input length.

    Returns:
      Batch of [batch_size, seq_len] inputs / targets / weights (all ones).
    """
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}.")
    windows = self._windows("train", batch_size, seq_len)
    rng = np.random.default_rng((self.seed, int(step)))
    starts = rng.integers(0, len(windows), size=batch_size)
    return lm_batch(windows[starts])

  def eval_batches(self, batch_size: int, seq_len: int,
                   n_batches: Optional[int] = None,
                   split: str = "eval") -> Iterator[Batch]:
    """Returns an iterator of deterministic evaluation batches of `split`.

    Args:
      batch_size: windows per batch.
      seq_len: model input length.
      n_batches: None scores every target token of the split exactly once:
        consecutive windows (the last one ends at the end of the split and
        weighs only tokens not scored before), the last batch padded with
        weight-0 rows. An int gives that many batches of evenly spaced windows
        (all weights 1; they overlap when they outnumber the split).
      split: 'eval' or 'test' (or 'train').

    Returns:
      Iterator of [batch_size, seq_len] batches.
    """
    windows = self._windows(split, batch_size, seq_len)
    n_targets = len(windows) - 1 + seq_len
    weights = None
    if n_batches is None:
      starts = np.arange(0, len(windows), seq_len)
      covered = starts[-1] + seq_len
      weights = np.ones((len(starts), seq_len), np.float32)
      if covered < n_targets:
        starts = np.append(starts, len(windows) - 1)
        tail = np.zeros((1, seq_len), np.float32)
        tail[0, seq_len - (n_targets - covered):] = 1.
        weights = np.concatenate([weights, tail])
      n_pad = -len(starts) % batch_size
      starts = np.append(starts, np.zeros(n_pad, np.int64))
      weights = np.concatenate(
          [weights, np.zeros((n_pad, seq_len), np.float32)])
    elif n_batches < 1:
      raise ValueError(f"n_batches must be >= 1 or None, got {n_batches}.")
    else:
      n_windows = batch_size * n_batches
      starts = np.round(np.linspace(0, len(windows) - 1, n_windows))
      starts = starts.astype(np.int64)
    return self._batches(windows, starts, weights, batch_size)

  @staticmethod
  def _batches(windows, starts, weights, batch_size) -> Iterator[Batch]:
    for i in range(0, len(starts), batch_size):
      rows = slice(i, i + batch_size)
      yield lm_batch(windows[starts[rows]],
                     None if weights is None else weights[rows])
