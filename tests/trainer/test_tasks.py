"""The trainer's tasks: masked-LM masking from the step's key, classification metrics."""
import jax
import numpy as np
import pytest

from reformer_jax.models import ReformerConfig
from reformer_jax.trainer import tasks

CONFIG = ReformerConfig(vocab_size=17, d_model=16, d_ff=32, n_heads=2, d_head=8, n_layers=1,
                        attention_types=("local",), local_chunk_len=8, positional="none",
                        causal=False, local_n_chunks_after=1, deterministic=True)


def test_macro_f1_averages_the_classes_seen():
  # labels 0 0 1 2, predictions 0 1 1 1: F1 per class 2/3, 2/4, 0; class 3 never occurs.
  tp, predicted, actual = np.array([1, 1, 0, 0]), np.array([1, 3, 0, 0]), np.array([2, 1, 1, 0])
  assert tasks.macro_f1(tp, predicted, actual) == pytest.approx((2 / 3 + 0.5 + 0) / 3)


def test_classification_eval_counts_give_accuracy_and_macro_f1():
  task = tasks.Classification(num_labels=3)
  model = task.model(CONFIG)
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


def test_masked_lm_masks_from_the_key_and_scores_only_masked_positions():
  task = tasks.MaskedLM()                                # mask id: vocab_size - 1 = 16
  model = task.model(CONFIG)
  tokens = np.random.default_rng(1).integers(0, 16, (4, 64)).astype(np.int32)
  weights = np.ones((4, 64), np.float32)
  weights[3] = 0.                                        # a padding example
  batch = {"inputs": tokens, "targets": tokens, "weights": weights}
  mask = jax.jit(lambda key: task._masked(model, batch, key))  # pylint: disable=protected-access
  masked, again, other = (mask(jax.random.PRNGKey(k)) for k in (3, 3, 4))
  chosen = np.asarray(masked["weights"]) > 0
  np.testing.assert_array_equal(masked["inputs"], again["inputs"])
  assert np.any(np.asarray(masked["inputs"]) != np.asarray(other["inputs"]))
  assert not chosen[3].any() and 0.05 < chosen[:3].mean() < 0.3
  np.testing.assert_array_equal(masked["targets"], tokens)
  assert np.all(np.asarray(masked["inputs"])[~chosen] == tokens[~chosen])
  assert np.mean(np.asarray(masked["inputs"])[chosen] == 16) > 0.5   # 80%: the mask id


@pytest.mark.parametrize("task, message", [
    (tasks.Classification(num_labels=3), "set ReformerConfig.causal = False"),
    (tasks.MaskedLM(), "set ReformerConfig.causal = False"),
])
def test_encoder_tasks_refuse_a_causal_config(task, message):
  with pytest.raises(ValueError, match=message):
    task.check(CONFIG.replace(causal=True))


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


def test_span_qa_eval_counts_exact_matches_and_overlap_f1():
  task = tasks.SpanQA()
  model = task.model(CONFIG)
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
