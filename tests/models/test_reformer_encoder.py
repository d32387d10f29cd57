"""Tests for reformer_jax.models.reformer_encoder: bidirectional encoders and their heads."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.layers.lsh_attention import draw_rotations
from reformer_jax.models import (ReformerConfig, ReformerEncoder, ReformerForQuestionAnswering,
                                 ReformerForSequenceClassification)
from reformer_jax.models import reformer_lm

BATCH, LENGTH, LABELS = 2, 32, 3
CONFIG = ReformerConfig(vocab_size=16, d_model=16, d_ff=32, n_heads=2, d_head=4, n_layers=2,
                        attention_types=("local", "lsh"), causal=False, max_len=LENGTH,
                        n_buckets=4, lsh_chunk_len=8, local_chunk_len=8,
                        local_n_chunks_after=1, lsh_n_chunks_after=1, ff_chunk_size=8,
                        loss_chunk_len=8, dropout_rate=0.1, attention_dropout=0.1)
EVAL = CONFIG.replace(deterministic=True)
ROTATIONS = draw_rotations(jax.random.PRNGKey(3), CONFIG.n_heads, CONFIG.d_head,
                           CONFIG.n_hashes, CONFIG.n_buckets)


def _tokens(seed, shape=(BATCH, LENGTH)):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, CONFIG.vocab_size)


def _init(model, tokens):
  rngs = {"params": jax.random.PRNGKey(1), "hash": jax.random.PRNGKey(2)}
  return jax.jit(model.init)(rngs, tokens)["params"]


@pytest.fixture(scope="module")
def classifier():
  """A classifier's params; its body's params are the encoder's."""
  model = ReformerForSequenceClassification(EVAL, num_labels=LABELS)
  params = _init(model, _tokens(0))
  encoder = jax.jit(lambda p, t, m: ReformerEncoder(EVAL).apply(
      {"params": p}, t, m, lsh_rotations=ROTATIONS))
  return model, params, encoder


def _body(params):
  return {k: v for k, v in params.items() if k not in ("classifier", "qa_outputs")}


def test_every_position_sees_both_directions(classifier):
  """Position 0 changes with the last token, the last position with the first."""
  _, params, encoder = classifier
  tokens = _tokens(4)
  base = np.asarray(encoder(_body(params), tokens, None))
  for changed, seen in ((tokens.at[:, -1].add(1) % 16, 0), (tokens.at[:, 0].add(1) % 16, -1)):
    out = np.asarray(encoder(_body(params), changed, None))
    assert np.abs(out[:, seen] - base[:, seen]).max() > 1e-4


@pytest.mark.parametrize("types", [("local",), ("lsh",), ("local", "full")])
def test_padding_is_never_attended_to(types):
  config = EVAL.replace(attention_types=types)
  model = ReformerEncoder(config)
  tokens = _tokens(5)
  mask = np.ones(tokens.shape, bool)
  mask[0, 20:] = False
  mask[1, 27:] = False
  params = _init(model, tokens)
  rotations = ROTATIONS if "lsh" in types else None
  run = jax.jit(lambda t: model.apply({"params": params}, t, jnp.asarray(mask),
                                      lsh_rotations=rotations))
  base = np.asarray(run(tokens))
  other = np.asarray(run(jnp.where(jnp.asarray(mask), tokens, (tokens + 5) % 16)))
  np.testing.assert_allclose(other[mask], base[mask], atol=1e-5)
  assert np.abs(other[~mask] - base[~mask]).max() > 1e-3


def test_classification_head_is_hf_layout_on_position_0(classifier):
  """Logits = out_proj(tanh(dense(hidden[:, 0]))) of the encoder's hidden states (numpy)."""
  model, params, encoder = classifier
  tokens = _tokens(6)
  mask = np.ones(tokens.shape, bool)
  mask[1, 25:] = False
  hidden = np.asarray(encoder(_body(params), tokens, jnp.asarray(mask)), np.float64)
  head = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params["classifier"])
  inner = np.tanh(hidden[:, 0] @ head["dense"]["kernel"] + head["dense"]["bias"])
  want = inner @ head["out_proj"]["kernel"] + head["out_proj"]["bias"]
  run = jax.jit(lambda p, t, m, labels=None: model.apply(
      {"params": p}, t, m, labels=labels, lsh_rotations=ROTATIONS))
  got = run(params, tokens, jnp.asarray(mask))
  assert got.shape == (BATCH, LABELS) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
  sums = run(params, tokens, jnp.asarray(mask), jnp.array([2, 0]))
  log_probs = want - np.log(np.exp(want).sum(-1, keepdims=True))
  np.testing.assert_allclose(float(sums["loss"]), -log_probs[[0, 1], [2, 0]].sum(), rtol=1e-5)
  assert float(sums["weight"]) == 2.
  assert float(sums["correct"]) == float(np.sum(want.argmax(-1) == np.array([2, 0])))


def test_span_logits_chunked_equal_the_unchunked_projection(classifier):
  """QA logits, computed 8 positions at a time, equal hidden @ qa_outputs (numpy)."""
  _, params, encoder = classifier
  model = ReformerForQuestionAnswering(EVAL)
  tokens = _tokens(7)
  qa_params = _init(model, tokens)
  hidden = np.asarray(encoder(_body(qa_params), tokens, None), np.float64)
  qa = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), qa_params["qa_outputs"])
  want = hidden @ qa["kernel"] + qa["bias"]
  start, end = jax.jit(lambda p: model.apply({"params": p}, tokens, lsh_rotations=ROTATIONS))(
      qa_params)
  np.testing.assert_allclose(np.asarray(start), want[..., 0], atol=1e-5)
  np.testing.assert_allclose(np.asarray(end), want[..., 1], atol=1e-5)


def test_reversible_gradients_equal_plain_autodiff(monkeypatch):
  """The classification loss's gradient through the reversible backward (inputs rebuilt,
  wrapping local look-around, LSH look-ahead, padding) equals plain autodiff of the same
  layers. (The span head's gradient is checked against HF's in tests/hf.)"""
  config = EVAL.replace(local_wrap=True)
  tokens = _tokens(8)
  mask = jnp.arange(LENGTH)[None, :] < jnp.array([[LENGTH], [27]])
  model = ReformerForSequenceClassification(config, num_labels=LABELS)
  kwargs = {"labels": jnp.array([1, 2])}
  params = _init(model, tokens)

  def grads():
    def loss(p):
      sums = model.apply({"params": p}, tokens, mask, lsh_rotations=ROTATIONS, **kwargs)
      return sums["loss"] / sums["weight"]
    return jax.jit(jax.value_and_grad(loss))(params)

  reversible = grads()
  monkeypatch.setattr(reformer_lm, "ReversibleStack",
                      functools.partial(reformer_lm.ReversibleStack, reversible=False))
  plain = grads()
  np.testing.assert_allclose(reversible[0], plain[0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(reversible[1]), jax.tree.leaves(plain[1])):
    assert float(jnp.abs(b).max()) > 0
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


def test_dropout_only_in_training():
  model = ReformerForSequenceClassification(CONFIG, num_labels=LABELS)
  tokens = _tokens(10)
  params = _init(ReformerForSequenceClassification(EVAL, num_labels=LABELS), tokens)
  apply = jax.jit(lambda key, deterministic: model.apply(
      {"params": params}, tokens, lsh_rotations=ROTATIONS, rngs={"dropout": key},
      deterministic=deterministic), static_argnums=1)
  run = lambda seed, deterministic=False: np.asarray(apply(jax.random.PRNGKey(seed),
                                                           deterministic))
  assert np.abs(run(0) - run(1)).max() > 1e-4
  np.testing.assert_allclose(run(0, True), run(1, True))
  np.testing.assert_allclose(run(0), run(0))


def test_bad_inputs_raise_one_clear_error():
  tokens = _tokens(0)
  causal = CONFIG.replace(causal=True)
  for model in (ReformerEncoder(causal), ReformerForQuestionAnswering(causal),
                ReformerForSequenceClassification(causal)):
    with pytest.raises(ValueError, match="causal=False"):
      _init(model, tokens)
  model = ReformerForSequenceClassification(EVAL, num_labels=LABELS)
  params = _init(model, tokens)
  apply = lambda **kw: model.apply({"params": params}, tokens, lsh_rotations=ROTATIONS, **kw)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*num_labels"):
    apply(labels=jnp.array([0, 3]))
  with pytest.raises(ValueError, match="labels must be \\[batch\\]"):
    apply(labels=jnp.zeros((2, 1), jnp.int32))
  with pytest.raises(ValueError, match="pass labels too"):
    apply(weights=jnp.ones(2))
  with pytest.raises(ValueError, match="head reads position 0: pad at the end"):
    model.apply({"params": params}, tokens, jnp.arange(LENGTH)[None, :] >= jnp.array([[0], [2]]),
                lsh_rotations=ROTATIONS)
  with pytest.raises(ValueError, match="num_labels must be a positive int"):
    _init(ReformerForSequenceClassification(EVAL, num_labels=0), tokens)
  with pytest.raises(ValueError, match="both start_positions and end_positions"):
    ReformerForQuestionAnswering(EVAL).init(
        {"params": jax.random.PRNGKey(0), "hash": jax.random.PRNGKey(0)}, tokens,
        start_positions=jnp.array([1, 2]))
