"""Contiguous train/eval/test splits of one token stream."""
from typing import Sequence, Tuple

import numpy as np


def contiguous_split(tokens: np.ndarray,
                     fractions: Sequence[float]) -> Tuple[np.ndarray, ...]:
  """Cuts [length] tokens into consecutive pieces of the given fractions.

  enwik8-style: (0.9, 0.05, 0.05) of 100M bytes gives the first 90M, the
  next 5M and the last 5M. Boundaries are round(length * cumulative fraction);
  the last piece ends at the end of the stream.

  Args:
    tokens: [length] token array (views are returned, nothing is copied).
    fractions: non-negative fractions summing to 1.

  Returns:
    One [piece_length] array per fraction.
  """
  fractions = np.asarray(fractions, np.float64)
  if fractions.ndim != 1 or fractions.size == 0 or np.any(fractions < 0):
    raise ValueError(
        f"split fractions must be a non-empty sequence of non-negative "
        f"numbers, e.g. (0.9, 0.05, 0.05); got {tuple(fractions.ravel())}.")
  if abs(fractions.sum() - 1.0) > 1e-6:
    raise ValueError(
        f"split fractions must sum to 1, got {tuple(fractions)} "
        f"(sum {fractions.sum():g}); e.g. use (0.9, 0.05, 0.05).")
  bounds = np.round(len(tokens) * np.cumsum(fractions)[:-1]).astype(np.int64)
  return tuple(np.split(tokens, bounds))
