"""Tests for reformer_jax.data.mqar against a plain reference generator of Zoology's rules."""
import numpy as np
import pytest

from reformer_jax.data.mqar import gap_probabilities, mqar


def reference_example(rng, seq_len, n, vocab, power_a, random_non_queries):
  """Zoology's `multiquery_ar` for one example, written out position by position, from the
  source's documented draws (keys, values, gaps, fill tokens)."""
  half = vocab // 2
  keys = rng.choice(np.arange(1, half), n, replace=False)
  values = rng.choice(np.arange(half, vocab), n, replace=False)
  space = (seq_len - 2 * n) // 2
  law = [power_a * (g + 1) ** (power_a - 1) for g in range(space)]
  gaps = rng.choice(space, n, replace=False, p=np.array(law) / sum(law))
  fill = rng.integers(vocab, size=seq_len)
  # Zoology: kvs, then a zero query region with key i at 2 * gap_i; labels one step later,
  # shifted back by one against the inputs.
  sequence = [0] * (seq_len + 1)
  labels = [-100] * (seq_len + 1)
  for i in range(n):
    sequence[2 * i], sequence[2 * i + 1] = keys[i], values[i]
    sequence[2 * n + 2 * gaps[i]] = keys[i]
    labels[2 * n + 2 * gaps[i] + 1] = values[i]
  inputs, labels = sequence[:-1], labels[1:]
  if random_non_queries:
    inputs = [fill[t] if token == 0 else token for t, token in enumerate(inputs)]
  targets = [max(label, 0) for label in labels]
  weights = [float(label >= 0) for label in labels]
  return inputs, targets, weights


@pytest.mark.parametrize("seq_len, n, vocab, power_a, random_non_queries", [
    (64, 8, 64, 0.01, True), (64, 8, 64, 1.0, False), (37, 4, 16, 0.5, True),
    (16, 4, 10, 0.01, True)])
def test_batches_are_zoologys_examples(seq_len, n, vocab, power_a, random_non_queries):
  data = mqar(num_kv_pairs=n, vocab_size=vocab, power_a=power_a,
              random_non_queries=random_non_queries, seed=3)
  batch = data.train_batch(5, 3, seq_len)
  rng = np.random.default_rng((3, 0, 5))
  for row in range(3):
    inputs, targets, weights = reference_example(rng, seq_len, n, vocab, power_a,
                                                 random_non_queries)
    np.testing.assert_array_equal(batch["inputs"][row], inputs)
    np.testing.assert_array_equal(batch["targets"][row], targets)
    np.testing.assert_array_equal(batch["weights"][row], weights)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      "inputs": ((3, seq_len), np.int32), "targets": ((3, seq_len), np.int32),
      "weights": ((3, seq_len), np.float32)}


def test_every_answer_is_the_value_paired_with_the_queried_key():
  n, vocab = 16, 128
  batch = mqar(num_kv_pairs=n, vocab_size=vocab, power_a=1.0, seed=1).train_batch(0, 8, 256)
  for inputs, targets, weights in zip(batch["inputs"], batch["targets"], batch["weights"]):
    pairs = dict(zip(inputs[0:2 * n:2].tolist(), inputs[1:2 * n:2].tolist()))
    assert len(pairs) == n and all(1 <= k < vocab // 2 for k in pairs)
    assert all(vocab // 2 <= v < vocab for v in pairs.values())
    queries = np.flatnonzero(weights)
    assert sorted(inputs[queries].tolist()) == sorted(pairs)   # each key once
    assert queries.min() >= 2 * n and np.all((queries - 2 * n) % 2 == 0)
    assert [pairs[k] for k in inputs[queries].tolist()] == targets[queries].tolist()
    assert np.all(targets[weights == 0] == 0)


def test_gaps_follow_the_power_law_and_power_a_one_is_uniform():
  # One pair: the gap is a single draw from p(g) ~ (g + 1) ** (power_a - 1) over 14 slots.
  space, draws = 14, 4000
  for power_a in (0.01, 1.0):
    batch = mqar(num_kv_pairs=1, vocab_size=8, power_a=power_a).train_batch(0, draws, 30)
    gaps = (np.flatnonzero(batch["weights"].ravel()) % 30 - 2) // 2
    counts = np.bincount(gaps, minlength=space)
    want = gap_probabilities(space, power_a) * draws
    assert len(counts) == space
    np.testing.assert_allclose(counts, want, atol=4 * np.sqrt(want.max()))
  assert gap_probabilities(space, 0.01)[0] > 0.3 and gap_probabilities(space, 1.0)[0] == 1 / 14


def test_batches_are_deterministic_from_seed_split_and_step():
  data = mqar(num_kv_pairs=4, vocab_size=32, seed=0)
  np.testing.assert_array_equal(data.train_batch(2, 2, 32)["inputs"],
                                mqar(num_kv_pairs=4, vocab_size=32, seed=0)
                                .train_batch(2, 2, 32)["inputs"])
  others = [data.train_batch(3, 2, 32), mqar(num_kv_pairs=4, vocab_size=32, seed=1)
            .train_batch(2, 2, 32), next(data.eval_batches(2, 32, 1))]
  for other in others:
    assert np.any(other["inputs"] != data.train_batch(2, 2, 32)["inputs"])
  evals = [b["inputs"] for b in data.eval_batches(2, 32, 2)]
  np.testing.assert_array_equal(evals[1], list(data.eval_batches(2, 32, 2))[1]["inputs"])


@pytest.mark.parametrize("make, message", [
    (lambda: mqar(num_kv_pairs=8).train_batch(0, 1, 31), r"seq_len >= 32 .*raise SEQ_LEN"),
    (lambda: mqar(num_kv_pairs=8, vocab_size=16), r"mqar.vocab_size >= 18"),
    (lambda: mqar(power_a=0.), r"\(0, 1\]"),
    (lambda: mqar().eval_batches(1, 512), "Experiment.eval_batches >= 1"),
])
def test_bad_settings_name_the_fix(make, message):
  with pytest.raises(ValueError, match=message):
    make()

