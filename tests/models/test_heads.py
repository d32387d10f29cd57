"""Tests for reformer_jax.models.heads: losses against torch's cross-entropy (HF's losses)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from reformer_jax.models.heads import ClassificationHead, classification_sums, span_sums


def test_classification_sums_match_torch_cross_entropy():
  rng = np.random.RandomState(0)
  logits, labels = rng.randn(5, 4).astype(np.float32), np.array([0, 3, 1, 1, 2])
  weights = np.array([1., 1., 0., 1., 1.], np.float32)
  sums = classification_sums(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights))
  per_example = torch.nn.functional.cross_entropy(torch.as_tensor(logits),
                                                  torch.as_tensor(labels), reduction="none")
  np.testing.assert_allclose(float(sums["loss"]), float((per_example.numpy() * weights).sum()),
                             rtol=1e-6)
  assert float(sums["weight"]) == 4.
  assert float(sums["correct"]) == float(((logits.argmax(-1) == labels) * weights).sum())


def test_span_sums_match_hf_question_answering_loss():
  """HF: positions clamped to [0, length], `length` ignored; mean of start and end losses."""
  rng = np.random.RandomState(1)
  length = 6
  start, end = (rng.randn(4, length).astype(np.float32) for _ in range(2))
  starts, ends = np.array([0, 5, 9, -2]), np.array([2, 6, 3, 1])
  sums = span_sums(*(jnp.asarray(t) for t in (start, end, starts, ends)))
  ce = torch.nn.CrossEntropyLoss(ignore_index=length)
  clamp = lambda p: torch.as_tensor(p).clamp(0, length)
  hf_start = ce(torch.as_tensor(start), clamp(starts))
  hf_end = ce(torch.as_tensor(end), clamp(ends))
  # Three starts and three ends count (9 and 6 are cut off, -2 becomes 0).
  assert float(sums["weight"]) == 6.
  np.testing.assert_allclose(float(sums["loss"] / sums["weight"]),
                             float((hf_start + hf_end) / 2), rtol=1e-6)
  hits = sum(int(start[i].argmax() == min(max(s, 0), length)) for i, s in enumerate(starts)
             if min(max(s, 0), length) < length)
  hits += sum(int(end[i].argmax() == e) for i, e in enumerate(ends) if e < length)
  assert float(sums["correct"]) == hits


def test_classification_head_dropout_and_shape_errors():
  head = ClassificationHead(d_model=4, num_labels=3, dropout_rate=0.5)
  h = jnp.ones((2, 8))
  params = head.init(jax.random.PRNGKey(0), h, deterministic=True)
  train = lambda seed: head.apply(params, h, False, rngs={"dropout": jax.random.PRNGKey(seed)})
  assert not np.allclose(train(0), train(1))
  np.testing.assert_allclose(head.apply(params, h, True), head.apply(params, h, True))
  with pytest.raises(ValueError, match=r"\[batch, 2 \* d_model\] = \[batch, 8\]"):
    head.apply(params, jnp.ones((2, 4)), True)
  with pytest.raises(ValueError, match="labels \\[batch\\]"):
    classification_sums(jnp.ones((2, 3)), jnp.zeros((3,), jnp.int32))
