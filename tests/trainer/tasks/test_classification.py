"""Tests for reformer_jax/trainer/tasks/classification.py: eval counts and macro F1."""
import jax
import numpy as np
import pytest

from reformer_jax.trainer import tasks


def test_macro_f1_averages_the_classes_seen():
  # labels 0 0 1 2, predictions 0 1 1 1: F1 per class 2/3, 2/4, 0; class 3 never occurs.
  tp, predicted, actual = np.array([1, 1, 0, 0]), np.array([1, 3, 0, 0]), np.array([2, 1, 1, 0])
  assert tasks.macro_f1(tp, predicted, actual) == pytest.approx((2 / 3 + 0.5 + 0) / 3)


def test_classification_eval_counts_give_accuracy_and_macro_f1(encoder_config):
  task = tasks.Classification(num_labels=3)
  model = task.model(encoder_config)
  rng = np.random.default_rng(0)
  batch = {"inputs": rng.integers(2, 17, (6, 16)).astype(np.int32),
           "mask": np.ones((6, 16), bool), "labels": np.array([0, 1, 2, 0, 1, 2], np.int32),
           "weights": np.array([1, 1, 1, 1, 1, 0], np.float32)}   # the last: padding
  key = jax.random.PRNGKey(0)
  params = jax.jit(model.init)({"params": key, "hash": key}, batch["inputs"])["params"]
  sums, outputs = jax.jit(lambda p, b, k: task.eval_outputs(model, p, b, k))(params, batch,
                                                                              key)
  guess = np.argmax(np.asarray(outputs["logits"]), -1)[:5]
  labels = batch["labels"][:5]
  metrics = task.summarize(jax.device_get(sums))
  assert metrics["accuracy"] == pytest.approx(np.mean(guess == labels))
  per_class = [(np.sum((guess == k) & (labels == k)), np.sum(guess == k), np.sum(labels == k))
               for k in range(3)]
  want = np.mean([2 * tp / (p + a) for tp, p, a in per_class if p + a])
  assert metrics["macro_f1"] == pytest.approx(want)
