"""Tests for reformer_jax.models.reformer_lm and reformer_jax.models.config."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.layers.lsh_attention import draw_rotations
from reformer_jax.models import ReformerConfig, ReformerLM
from reformer_jax.models.reformer_lm import AttentionBlock, layer_rotations

BATCH, LENGTH = 2, 32
CONFIG = ReformerConfig(vocab_size=16, d_model=16, d_ff=32, n_heads=2, d_head=4, n_layers=2,
                        attention_types=("local", "lsh"), max_len=LENGTH, n_buckets=4,
                        lsh_chunk_len=8, local_chunk_len=8, ff_chunk_size=8, loss_chunk_len=8,
                        dropout_rate=0.1, attention_dropout=0.1, lsh_attention_dropout=0.1)
EVAL = CONFIG.replace(deterministic=True)


def _tokens(seed, shape=(BATCH, LENGTH)):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, CONFIG.vocab_size)


@pytest.fixture(scope="module")
def setup():
  """Parameters, fixed LSH rotations and jitted eval functions (compiled once)."""
  model = ReformerLM(EVAL)
  tokens = _tokens(0)
  rngs = {"params": jax.random.PRNGKey(1), "hash": jax.random.PRNGKey(2)}
  params = jax.jit(model.init)(rngs, tokens)["params"]
  rotations = draw_rotations(jax.random.PRNGKey(3), EVAL.n_heads, EVAL.d_head, EVAL.n_hashes,
                             EVAL.n_buckets)
  logits_fn = jax.jit(lambda p, t, m: model.apply({"params": p}, t, m, lsh_rotations=rotations))
  loss_fn = jax.jit(lambda p, t, m, y: model.apply({"params": p}, t, m, targets=y,
                                                   lsh_rotations=rotations))
  return params, logits_fn, loss_fn


def test_param_tree_and_shapes():
  model = ReformerLM(CONFIG)
  tokens = _tokens(0)
  rngs = {"params": jax.random.PRNGKey(1), "dropout": jax.random.PRNGKey(2),
          "hash": jax.random.PRNGKey(3)}
  variables = jax.eval_shape(model.init, rngs, tokens)
  shapes = jax.tree_util.tree_map(lambda x: x.shape, variables["params"])
  d, vocab = CONFIG.d_model, CONFIG.vocab_size
  inner = CONFIG.n_heads * CONFIG.d_head
  assert shapes["token_embed"] == {"embedding": (vocab, d)}
  assert shapes["positional"] == {"axis_0": (4, 4), "axis_1": (8, 12)}
  local = shapes["encoder"]["layer_0"]["attention"]
  assert local["norm"] == {"scale": (d,), "bias": (d,)}
  assert local["attention"] == {name: {"kernel": (d, inner)} for name in ("query", "key", "value")
                                } | {"out": {"kernel": (inner, d)}}
  lsh = shapes["encoder"]["layer_1"]["attention"]["attention"]
  assert lsh == {"query_key": {"kernel": (d, inner)}, "value": {"kernel": (d, inner)},
                 "out": {"kernel": (inner, d)}}
  ff = shapes["encoder"]["layer_1"]["feed_forward"]
  assert ff["feed_forward"]["wi"] == {"kernel": (d, CONFIG.d_ff), "bias": (CONFIG.d_ff,)}
  assert ff["feed_forward"]["wo"] == {"kernel": (CONFIG.d_ff, d), "bias": (d,)}
  assert shapes["final_norm"] == {"scale": (2 * d,), "bias": (2 * d,)}
  assert shapes["lm_head"] == {"kernel": (2 * d, vocab), "bias": (vocab,)}
  logits = jax.eval_shape(lambda v: model.apply(v, tokens, rngs=rngs), variables)
  assert logits.shape == (BATCH, LENGTH, vocab)
  no_bias = ReformerLM(CONFIG.replace(lm_head_bias=False, positional="sinusoidal"))
  shapes = jax.tree_util.tree_map(lambda x: x.shape,
                                  jax.eval_shape(no_bias.init, rngs, tokens)["params"])
  assert shapes["lm_head"] == {"kernel": (2 * d, vocab)} and "positional" not in shapes


def test_causal(setup):
  """Changing tokens after position i leaves logits at positions <= i unchanged."""
  params, logits_fn, _ = setup
  tokens = _tokens(4)
  mask = jnp.ones(tokens.shape, bool)
  base = logits_fn(params, tokens, mask)
  for i in (5, 17, 24):
    changed = tokens.at[:, i + 1:].set((tokens[:, i + 1:] + 1 + i) % CONFIG.vocab_size)
    out = logits_fn(params, changed, mask)
    np.testing.assert_allclose(out[:, :i + 1], base[:, :i + 1], atol=1e-5)
    assert not np.allclose(out[:, i + 1:], base[:, i + 1:], atol=1e-3)


def test_padding_invariance(setup):
  """Tokens at padded positions (anywhere) do not affect the logits of real positions."""
  params, logits_fn, _ = setup
  tokens = _tokens(5)
  mask = jax.random.bernoulli(jax.random.PRNGKey(6), 0.75, tokens.shape).at[:, 0].set(True)
  base = logits_fn(params, tokens, mask)
  changed = jnp.where(mask, tokens, (tokens + 3) % CONFIG.vocab_size)
  out = logits_fn(params, changed, mask)
  real = np.asarray(mask)
  np.testing.assert_allclose(np.asarray(out)[real], np.asarray(base)[real], atol=1e-5)
  # Without the mask the padded tokens are attended to and the real logits change.
  no_mask = jnp.ones(tokens.shape, bool)
  assert not np.allclose(np.asarray(logits_fn(params, changed, no_mask))[real],
                         np.asarray(logits_fn(params, tokens, no_mask))[real], atol=1e-3)


def test_targets_path_matches_logits(setup):
  params, logits_fn, loss_fn = setup
  tokens, targets = _tokens(7), _tokens(8)
  mask = jnp.arange(LENGTH)[None, :] < jnp.array([LENGTH, 21])[:, None]
  logits = logits_fn(params, tokens, mask)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  weights = mask.astype(jnp.float32)
  out = loss_fn(params, tokens, mask, targets)
  np.testing.assert_allclose(out["loss"], jnp.sum(nll * weights), rtol=1e-5)
  np.testing.assert_allclose(out["weight"], jnp.sum(weights))
  correct = jnp.sum((jnp.argmax(logits, -1) == targets) * weights)
  np.testing.assert_allclose(out["correct"], correct)


def test_dropout_follows_rng_and_eval_ignores_it(setup):
  """Train config: output depends on the 'dropout' rng; eval config (deterministic): not."""
  params = setup[0]
  tokens = _tokens(9)

  @functools.partial(jax.jit, static_argnums=0)
  def run(config, dropout_seed):
    rngs = {"dropout": jax.random.PRNGKey(dropout_seed), "hash": jax.random.PRNGKey(1)}
    return ReformerLM(config).apply({"params": params}, tokens, rngs=rngs)

  train_a, train_b = run(CONFIG, 1), run(CONFIG, 2)
  np.testing.assert_array_equal(train_a, run(CONFIG, 1))
  assert not np.allclose(train_a, train_b, atol=1e-3)
  eval_a, eval_b = run(EVAL, 1), run(EVAL, 2)
  np.testing.assert_array_equal(eval_a, eval_b)
  assert not np.allclose(eval_a, train_a, atol=1e-3)


@pytest.mark.parametrize("changes", [
    dict(axial_dims=(4, 8)),
    dict(axial_shape=(2, 2), max_len=32),
    dict(attention_types=("local", "global")),
    dict(attention_types=()),
    dict(positional="learned", max_len=None),
    dict(positional="rotary"),
    dict(n_buckets=5),
    dict(lsh_n_chunks_before=0),
    dict(dropout_rate=1.0),
    dict(d_model=0),
    dict(local_chunk_len=0),
    dict(ff_chunk_size=0),
    dict(ff_chunk_size=2.5),
    dict(max_len=32.),
    dict(n_heads=True),
    dict(lsh_n_chunks_after=False),
    dict(axial_dims=(4., 12)),
    dict(stream_dtype="int8"),
    dict(dtype="not_a_dtype"),
])
def test_bad_config_raises(changes):
  with pytest.raises(ValueError):
    CONFIG.replace(**changes)


def test_config_defaults_are_valid_and_hashable():
  config = ReformerConfig()
  assert config.layer_attention_types() == ("local", "lsh") * 3
  assert config.resolved_axial_dims == (64, 192)
  assert hash(config) == hash(ReformerConfig())
  assert ReformerConfig(attention_types=["lsh"]).attention_types == ("lsh",)
  assert ReformerConfig(max_len=1000).resolved_axial_shape == (32, 32)


def test_config_accepts_numpy_ints_as_python_ints():
  config = CONFIG.replace(d_model=np.int64(16), ff_chunk_size=np.int32(8),
                          n_buckets=np.int64(4), axial_dims=(np.int64(4), 12))
  assert config == CONFIG.replace(axial_dims=(4, 12))
  assert type(config.d_model) is int and type(config.axial_dims[0]) is int
  assert type(config.replace(n_buckets=[np.int8(2), 4]).n_buckets[0]) is int


def test_out_of_range_token_ids(setup):
  """Concrete ids outside [0, vocab_size) raise; under jit -1 gives NaN like vocab_size."""
  params, logits_fn, _ = setup
  tokens = _tokens(12)
  mask = jnp.ones(tokens.shape, bool)
  assert not np.isnan(np.asarray(logits_fn(params, tokens, mask))).any()
  for bad in (-1, CONFIG.vocab_size):
    changed = tokens.at[0, 3].set(bad)
    assert np.isnan(np.asarray(logits_fn(params, changed, mask))[0, 3]).all()
    with pytest.raises(ValueError, match=r"\[0, 16\) \(vocab_size 16\).*set ReformerConfig"):
      ReformerLM(EVAL).apply({"params": params}, changed)
    with pytest.raises(ValueError, match=r"target ids must lie in \[0, 16\)"):
      ReformerLM(EVAL).apply({"params": params}, tokens, targets=changed)


def test_bad_inputs_raise():
  model = ReformerLM(EVAL)
  tokens = _tokens(0)
  rngs = {"params": jax.random.PRNGKey(0), "hash": jax.random.PRNGKey(0)}
  init = lambda *args, **kwargs: jax.eval_shape(
      lambda: model.init(rngs, *args, **kwargs))
  with pytest.raises(ValueError, match="tokens"):
    init(tokens.astype(jnp.float32))
  with pytest.raises(ValueError, match="mask"):
    init(tokens, jnp.ones((BATCH, LENGTH - 1), bool))
  with pytest.raises(ValueError, match="targets"):
    init(tokens, targets=tokens[:, 1:])
  with pytest.raises(ValueError, match="at least one position"):
    init(tokens[:, :0])
  rotations = jnp.zeros((EVAL.n_heads, EVAL.d_head, 1, 2))
  with pytest.raises(ValueError, match="lsh_rotations"):
    init(tokens, lsh_rotations=[rotations, rotations])


def test_the_lsh_layer_of_a_local_lsh_model_with_one_bucket_is_shared_qk_full_attention():
  """Zero rotations (one bucket) and one chunk: each round of the local/LSH model's LSH
  layer sees every earlier key, so loss and gradients (the reversible backward, 2 rounds)
  are those of the same parameters with shared-QK full attention in that layer."""
  config = EVAL.replace(n_hashes=2, n_buckets=2, lsh_chunk_len=LENGTH)
  tokens, targets = _tokens(12), _tokens(13)
  params = jax.jit(ReformerLM(config).init)({"params": jax.random.PRNGKey(1)}, tokens,
                                            lsh_rotations=jnp.zeros((2, 4, 2, 1)))["params"]

  def loss_and_grads(cfg, **kw):
    def loss(p):
      out = ReformerLM(cfg).apply({"params": p}, tokens, targets=targets, **kw)
      return out["loss"] / out["weight"]
    return jax.jit(jax.value_and_grad(loss))(params)

  lsh = loss_and_grads(config, lsh_rotations=jnp.zeros((2, 4, 2, 1)))
  full = loss_and_grads(config.replace(attention_types=("local", "shared_qk_full")))
  np.testing.assert_allclose(lsh[0], full[0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(lsh[1]), jax.tree.leaves(full[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert float(jnp.abs(lsh[1]["encoder"]["layer_1"]["attention"]["attention"]["query_key"]
                       ["kernel"]).max()) > 1e-4   # the LSH layer's gradient is not empty


def test_lsh_rotations_map_to_lsh_layers():
  types = CONFIG.replace(n_layers=4).layer_attention_types()
  a, b = jnp.zeros((2, 4, 1, 2)), jnp.ones((2, 4, 1, 2))
  assert layer_rotations([a, b], types) == (None, a, None, b)
  assert layer_rotations(a, types) == (None, a, None, a)
  assert layer_rotations(None, types) is None


def test_bfloat16_streams_approximate_float32():
  """stream_dtype=bfloat16: loss and gradients near the float32-stream model's."""
  tokens, targets = _tokens(10), _tokens(11)
  rngs = {"params": jax.random.PRNGKey(1), "hash": jax.random.PRNGKey(2)}
  params = jax.jit(ReformerLM(EVAL).init)(rngs, tokens)["params"]
  rotations = draw_rotations(jax.random.PRNGKey(3), EVAL.n_heads, EVAL.d_head, EVAL.n_hashes,
                             EVAL.n_buckets)

  def loss_and_grads(config):
    def loss(p, t):
      out = ReformerLM(config).apply({"params": p}, t, targets=targets, lsh_rotations=rotations,
                                     rngs={"dropout": jax.random.PRNGKey(4)})
      return out["loss"] / out["weight"]
    return jax.jit(jax.value_and_grad(loss))(params, tokens)

  loss32, grads32 = loss_and_grads(CONFIG)
  loss16, grads16 = loss_and_grads(CONFIG.replace(stream_dtype="bfloat16"))
  np.testing.assert_allclose(loss16, loss32, rtol=2e-2)
  flat32 = jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(grads32)])
  flat16 = jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(grads16)])
  assert flat16.dtype == jnp.float32  # parameters and their gradients stay float32
  cosine = jnp.dot(flat16, flat32) / (jnp.linalg.norm(flat16) * jnp.linalg.norm(flat32))
  assert cosine > 0.99, cosine
  assert not np.allclose(flat16, flat32)  # the streams really are bfloat16


@pytest.mark.parametrize("causal", [True, False])
def test_attention_rebuild_gives_the_gradients_of_the_two_pass_backward(causal, monkeypatch):
  """The attention blocks' one-pass rebuild + VJP (`AttentionBlock.rebuilds`) gives the
  gradients of the generic rebuild-then-VJP backward, dropout on, padding mask given."""
  config = CONFIG.replace(causal=causal, dropout_rate=0.2, attention_dropout=0.2,
                          lsh_attention_dropout=0.2, local_chunk_len=4)
  model = ReformerLM(config)
  tokens = _tokens(4)
  mask = jnp.arange(LENGTH)[None, :] < jnp.array([[LENGTH], [25]])
  rngs = {"dropout": jax.random.PRNGKey(7), "hash": jax.random.PRNGKey(8)}
  params = jax.jit(model.init)({"params": jax.random.PRNGKey(5), **rngs}, tokens)["params"]
  calls = []

  def grads():
    def loss(p):
      sums = model.apply({"params": p}, tokens, mask, targets=tokens, rngs=rngs)
      return sums["loss"] / sums["weight"]
    return jax.jit(jax.value_and_grad(loss))(params)

  original = AttentionBlock.__call__

  def counting(self, *args, rebuild=None, **kw):
    out = original(self, *args, rebuild=rebuild, **kw)
    calls.append(rebuild is not None and out is not None)
    return out

  monkeypatch.setattr(AttentionBlock, "__call__", counting)
  fused = grads()
  assert sum(calls) == 2  # both layers' attention took the one-pass backward
  monkeypatch.setattr(AttentionBlock, "rebuilds", False)
  calls.clear()
  two_pass = grads()
  assert not any(calls)
  np.testing.assert_allclose(fused[0], two_pass[0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(fused[1]), jax.tree.leaves(two_pass[1])):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
