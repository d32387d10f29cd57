"""Metrics: summaries from loss sums, written to TensorBoard, console and JSON lines."""
import json
import math
import os
from typing import Mapping, Optional

import numpy as np
import tqdm


def summarize(sums: Mapping[str, float]) -> dict:
  """Mean loss (nats/token), accuracy and bits per byte from summed counts.

  `sums` holds 'loss', 'correct' and 'weight' summed over tokens. For byte-level
  data bits per token is bits per byte.
  """
  weight = max(float(sums["weight"]), 1e-9)
  loss = float(sums["loss"]) / weight
  return {"loss": loss, "accuracy": float(sums["correct"]) / weight,
          "bits_per_byte": loss / math.log(2)}


def add_sums(a, b):
  return {k: a.get(k, 0.0) + np.asarray(v, np.float64) for k, v in b.items()}


class MetricWriter:
  """Writes scalars to TensorBoard event files, `metrics.jsonl` and the console."""

  def __init__(self, workdir: str):
    # Imported here: tensorboardX imports torch whenever it is installed (about 170 MB of
    # RSS and 1.5 s), which code that only builds or benchmarks models should not pay.
    import tensorboardX  # pylint: disable=import-outside-toplevel
    self._tb = tensorboardX.SummaryWriter(logdir=workdir)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

  def write(self, step: int, split: str, metrics: Mapping[str, float]):
    for name, value in metrics.items():
      self._tb.add_scalar(f"{split}/{name}", value, step)
    self._tb.flush()
    self._jsonl.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
    self._jsonl.flush()
    text = "  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
    tqdm.tqdm.write(f"[{split}] step {step}: {text}")

  def close(self):
    self._tb.close()
    self._jsonl.close()


def _fmt(value: float) -> str:
  return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


def unigram_bits(data) -> Optional[float]:
  """Entropy (bits/token) of the training split's token frequencies, if it has one.

  The loss a model reaches by ignoring context: the baseline to beat.
  """
  tokens = getattr(data, "splits", {}).get("train")
  if tokens is None:
    return None
  counts = np.bincount(np.asarray(tokens), minlength=data.vocab_size)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log2(p)).sum())
