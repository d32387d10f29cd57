"""The small English corpus shipped inside the package (no download)."""
import pathlib

import numpy as np

from reformer_jax.data.lm_data import LMData
from reformer_jax.data.splits import contiguous_split

CORPUS_PATH = pathlib.Path(__file__).parent / "corpus" / "shakespeare.txt"


def shipped_corpus(seed: int = 0, eval_fraction: float = 0.05) -> LMData:
  """Byte-level LMData (vocab 256) over Hamlet + Macbeth (~280 KB).

  Args:
    seed: seed of the training crops.
    eval_fraction: the last `eval_fraction` of the text is the 'eval' split,
      the rest 'train' (there is no 'test' split).

  Returns:
    LMData with 'train' and 'eval' [length] uint8 byte streams.
  """
  if not 0 < eval_fraction < 1:
    raise ValueError(
        f"eval_fraction must lie in (0, 1), got {eval_fraction}; e.g. 0.05.")
  tokens = np.frombuffer(CORPUS_PATH.read_bytes(), np.uint8)
  train, eval_ = contiguous_split(tokens, (1 - eval_fraction, eval_fraction))
  return LMData({"train": train, "eval": eval_}, seed=seed)
