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
