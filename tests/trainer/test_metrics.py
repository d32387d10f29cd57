"""Tests for reformer_jax/trainer/metrics.py."""
import json
import math

import pytest

from reformer_jax.trainer import metrics


def _lines(path):
  return [json.loads(l) for l in path.read_text().splitlines()]


def test_summarize_turns_sums_into_means():
  out = metrics.summarize({"loss": 6.0, "correct": 3.0, "weight": 4.0})
  assert out["loss"] == 1.5 and out["accuracy"] == 0.75
  assert out["bits_per_byte"] == pytest.approx(1.5 / math.log(2))


def test_resuming_supersedes_the_lines_after_the_start(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path))
  for step in (1, 2, 3):
    writer.write(step, "train", {"loss": float(step)})
  writer.write(2, "eval", {"loss": 9.0})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "spl')  # a line cut short by a kill
  writer = metrics.MetricWriter(str(tmp_path), start=2)
  writer.write(3, "train", {"loss": 30.0})
  writer.close()
  assert [(r["step"], r["split"], r["loss"]) for r in _lines(tmp_path / "metrics.jsonl")] == [
      (1, "train", 1.0), (2, "train", 2.0), (2, "eval", 9.0), (3, "train", 30.0)]
  superseded = (tmp_path / "metrics_superseded.jsonl").read_text().splitlines()
  assert json.loads(superseded[0]) == {"step": 3, "split": "train", "loss": 3.0}
  assert superseded[1:] == ['{"step": 4, "spl']  # kept, on a line of its own


def test_writing_a_step_and_split_again_keeps_the_latest(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path))
  writer.write(5, "train", {"loss": 1.0})
  writer.write(5, "eval", {"loss": 2.0})
  writer.close()
  # An evaluation-only rerun at the final step evaluates step 5 again.
  writer = metrics.MetricWriter(str(tmp_path), start=5)
  writer.write(5, "eval", {"loss": 2.5})
  writer.write(5, "eval", {"loss": 2.25})
  writer.close()
  assert [(r["split"], r["loss"]) for r in _lines(tmp_path / "metrics.jsonl")] == [
      ("train", 1.0), ("eval", 2.25)]
  assert [r["loss"] for r in _lines(tmp_path / "metrics_superseded.jsonl")] == [2.0, 2.5]
