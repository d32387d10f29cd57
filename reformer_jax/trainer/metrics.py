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
  """Writes scalars to TensorBoard event files, `metrics.jsonl` and the console.

  A run that starts (or resumes) at step `start` supersedes what an earlier run in the
  workdir logged after it: TensorBoard hides those events (`purge_step`), and their
  `metrics.jsonl` lines move to `metrics_superseded.jsonl`.
  """

  def __init__(self, workdir: str, start: int = 0):
    # Imported here: tensorboardX imports torch whenever it is installed (about 170 MB of
    # RSS and 1.5 s), which code that only builds or benchmarks models should not pay.
    import tensorboardX  # pylint: disable=import-outside-toplevel
    self._tb = tensorboardX.SummaryWriter(logdir=workdir, purge_step=start + 1)
    path = os.path.join(workdir, "metrics.jsonl")
    _supersede(path, os.path.join(workdir, "metrics_superseded.jsonl"), start)
    self._jsonl = open(path, "a")

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


def _supersede(path: str, superseded: str, start: int):
  """Moves the lines of `path` logged after step `start` to the end of `superseded`."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  later = [_step(l) > start for l in lines]
  if not any(later):
    return
  with open(superseded, "a") as f:
    f.writelines(l for l, move in zip(lines, later) if move)
  with open(path + ".tmp", "w") as f:
    f.writelines(l for l, move in zip(lines, later) if not move)
  os.replace(path + ".tmp", path)


def _step(line: str) -> float:
  """The step a metrics line was logged at (-inf for a line cut short by a kill)."""
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError, TypeError):
    return -math.inf


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
