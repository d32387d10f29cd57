"""Metrics: summaries from loss sums, written to TensorBoard, console and JSON lines."""
import json
import logging
import math
import os
from typing import Mapping, Optional

import numpy as np
import tqdm


def summarize(sums: Mapping[str, float]) -> dict:
  """Mean loss (nats/token), accuracy and bits per byte from summed counts.

  `sums` holds 'loss', 'correct' and 'weight' summed over tokens. For byte-level
  data bits per token is bits per byte. No weight (every step skipped): NaN.
  """
  weight = float(sums["weight"]) or math.nan
  loss = float(sums["loss"]) / weight
  return {"loss": loss, "accuracy": float(sums["correct"]) / weight,
          "bits_per_byte": loss / math.log(2)}


def add_sums(a, b):
  return {k: a.get(k, 0.0) + np.asarray(v, np.float64) for k, v in b.items()}


class MetricWriter:
  """Writes scalars to TensorBoard event files, `metrics.jsonl` and the console.

  A run that starts (or resumes) at step `start` supersedes what an earlier run in the
  workdir logged after it: TensorBoard hides those events (`purge_step`), and their
  `metrics.jsonl` lines move to `metrics_superseded.jsonl`. So do a line written again
  for the same step and split (an evaluation-only rerun: `metrics.jsonl` keeps the latest)
  and a line cut short by a kill.
  """

  def __init__(self, workdir: str, start: int = 0):
    # Imported here: tensorboardX imports torch whenever it is installed (about 170 MB of
    # RSS and 1.5 s), which code that only builds or benchmarks models should not pay.
    import tensorboardX  # pylint: disable=import-outside-toplevel
    # It warns on every NaN scalar; a skipped (non-finite) step logs a NaN loss by design.
    logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
    self._tb = tensorboardX.SummaryWriter(logdir=workdir, purge_step=start + 1)
    self._path = os.path.join(workdir, "metrics.jsonl")
    self._superseded = os.path.join(workdir, "metrics_superseded.jsonl")
    self._logged = _supersede(self._path, self._superseded, lambda key: key[0] > start)
    self._jsonl = open(self._path, "a")

  def write(self, step: int, split: str, metrics: Mapping[str, float]):
    for name, value in metrics.items():
      self._tb.add_scalar(f"{split}/{name}", value, step)
    self._tb.flush()
    if (step, split) in self._logged:
      self._jsonl.close()
      self._logged = _supersede(self._path, self._superseded,
                                lambda key: key == (step, split))
      self._jsonl = open(self._path, "a")
    self._logged.add((step, split))
    self._jsonl.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
    self._jsonl.flush()
    text = "  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
    tqdm.tqdm.write(f"[{split}] step {step}: {text}")

  def close(self):
    self._tb.close()
    self._jsonl.close()


class NoWriter:
  """Stands in for MetricWriter on the processes of a multi-host run but the first."""

  def write(self, step: int, split: str, metrics: Mapping[str, float]):
    del step, split, metrics

  def close(self):
    pass


def _supersede(path: str, superseded: str, move) -> set:
  """Moves the lines of `path` whose (step, split) satisfies `move`, and lines cut short
  by a kill, to the end of `superseded`; returns the (step, split) of the lines left."""
  if not os.path.exists(path):
    return set()
  with open(path) as f:
    lines = [l if l.endswith("\n") else l + "\n" for l in f.readlines()]
  keys = [_key(l) for l in lines]
  moved = [k is None or move(k) for k in keys]
  if any(moved):
    with open(superseded, "a") as f:
      f.writelines(l for l, m in zip(lines, moved) if m)
    with open(path + ".tmp", "w") as f:
      f.writelines(l for l, m in zip(lines, moved) if not m)
    os.replace(path + ".tmp", path)
  return {k for k, m in zip(keys, moved) if not m}


def _key(line: str) -> Optional[tuple]:
  """(step, split) of a metrics line; None for a line cut short by a kill."""
  try:
    record = json.loads(line)
    return record["step"], record["split"]
  except (ValueError, KeyError, TypeError):
    return None


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
