"""The batch format shared by every data source.

A batch is a dict of numpy arrays:
  'inputs':  [batch, seq_len] int32, the tokens the model reads;
  'targets': [batch, seq_len] int32, the token to predict at each position
             (targets[:, t] == inputs[:, t + 1]);
  'weights': [batch, seq_len] float32, the loss weight of each target
             (0 = not scored).
"""
from typing import Dict, Optional

import numpy as np

Batch = Dict[str, np.ndarray]


def lm_batch(windows: np.ndarray,
             weights: Optional[np.ndarray] = None) -> Batch:
  """Splits token windows into a shifted language-modelling batch.

  Args:
    windows: [batch, seq_len + 1] integer tokens.
    weights: optional [batch, seq_len] loss weights of the targets
      windows[:, 1:]; None = all ones.

  Returns:
    Batch with inputs = windows[:, :-1], targets = windows[:, 1:].
  """
  windows = np.asarray(windows)
  if windows.ndim != 2 or windows.shape[1] < 2:
    raise ValueError(
        f"windows must be [batch, seq_len + 1] with seq_len >= 1, got shape "
        f"{windows.shape}.")
  shape = (windows.shape[0], windows.shape[1] - 1)
  if weights is None:
    weights = np.ones(shape, np.float32)
  elif np.shape(weights) != shape:
    raise ValueError(
        f"weights must have the targets' shape {shape}, got "
        f"{np.shape(weights)}.")
  return {
      "inputs": windows[:, :-1].astype(np.int32),
      "targets": windows[:, 1:].astype(np.int32),
      "weights": np.asarray(weights, np.float32),
  }


def batch_rng(seed: int, stream: int, index: int, batch_size: int) -> np.random.Generator:
  """The generator of batch `index` of `stream` of a synthetic task seeded with `seed`
  (deterministic: the same batch on every call and host). Raises ValueError (one line) for
  `batch_size` < 1 or `index` < 0."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  if index < 0:
    raise ValueError(f"step must be >= 0, got {index}.")
  return np.random.default_rng((seed, stream, int(index)))
