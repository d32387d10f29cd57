"""Byte-level language-modelling data from any local file (e.g. enwik8)."""
import os
from typing import Sequence

import numpy as np

from reformer_jax.data.lm_data import LMData
from reformer_jax.data.splits import contiguous_split


def local_file(path: str, seed: int = 0,
               split: Sequence[float] = (0.9, 0.05, 0.05)) -> LMData:
  """Byte-level LMData (vocab 256) over the bytes of a local file.

  The file is memory-mapped, not read into memory. Splits are contiguous:
  with the default (0.9, 0.05, 0.05) the 100,000,000-byte enwik8 file gives
  the standard first 90M train, next 5M 'eval' (valid) and last 5M 'test'.

  Args:
    path: a text or binary file (e.g. the unzipped `enwik8`).
    seed: seed of the training crops.
    split: (train, eval, test) fractions summing to 1.

  Returns:
    LMData with 'train', 'eval' and 'test' [length] uint8 byte streams.
  """
  path = os.path.expanduser(os.fspath(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"local_file: no file at {path!r}. Give the path of an existing text "
        "or byte file (for enwik8: download http://mattmahoney.net/dc/"
        "enwik8.zip and unzip it to get the 100,000,000-byte file `enwik8`), "
        "or use shipped_corpus() to train on the corpus shipped with the "
        "package.")
  if len(split) != 3:
    raise ValueError(
        f"split must be three (train, eval, test) fractions, got {split}.")
  if os.path.getsize(path) == 0:
    raise ValueError(f"local_file: {path!r} is empty.")
  tokens = np.memmap(path, np.uint8, mode="r")
  train, eval_, test = contiguous_split(tokens, split)
  return LMData({"train": train, "eval": eval_, "test": test}, seed=seed)
