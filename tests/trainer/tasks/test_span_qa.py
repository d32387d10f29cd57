"""Tests for reformer_jax/trainer/tasks/span_qa.py: the best span and its eval counts."""
import jax
import numpy as np
import pytest

from reformer_jax.trainer import tasks


def test_best_span_is_the_best_scoring_start_before_end():
  rng = np.random.default_rng(2)
  start, end = rng.integers(-3, 3, (2, 16, 9)).astype(np.float32)   # integer ties
  got_start, got_end = jax.jit(tasks.best_span)(start, end)
  for row in range(16):
    scores = start[row][:, None] + end[row][None, :]
    scores[np.tril_indices(9, -1)] = -np.inf                       # s > e
    s, e = np.unravel_index(np.argmax(scores), scores.shape)      # first best (s, e)
    assert scores[got_start[row], got_end[row]] == scores[s, e]
    assert got_start[row] <= got_end[row]
    assert got_start[row] == np.argmax(start[row][:got_end[row] + 1])


def test_span_qa_eval_counts_exact_matches_and_overlap_f1(encoder_config):
  task = tasks.SpanQA()
  model = task.model(encoder_config)
  rng = np.random.default_rng(3)
  batch = {"inputs": rng.integers(3, 17, (4, 16)).astype(np.int32),
           "mask": np.ones((4, 16), bool), "start": np.array([2, 5, 0, 16], np.int32),
           "end": np.array([4, 5, 3, 16], np.int32),
           "weights": np.array([1, 1, 1, 0], np.float32)}                # the last: padding
  key = jax.random.PRNGKey(0)
  params = jax.jit(model.init)({"params": key, "hash": key}, batch["inputs"])["params"]
  sums, outputs = jax.jit(lambda p, b, k: task.eval_outputs(model, p, b, k))(params, batch,
                                                                              key)
  metrics = task.summarize(jax.device_get(sums))
  spans = list(zip(np.asarray(outputs["predicted_start"]), np.asarray(outputs["predicted_end"])))
  f1s, exact = [], []
  for (s, e), a, b in zip(spans[:3], batch["start"], batch["end"]):
    overlap = len(set(range(s, e + 1)) & set(range(a, b + 1)))
    f1s.append(2 * overlap / ((e - s + 1) + (b - a + 1)))
    exact.append((s, e) == (a, b))
  assert metrics["f1"] == pytest.approx(np.mean(f1s))
  assert metrics["exact_match"] == pytest.approx(np.mean(exact))
  assert float(sums["weight"]) == 6                                  # 3 examples x 2 ends
