"""Tests for reformer_jax.layers.full_attention against a plain numpy softmax(QK^T) V."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.layers.full_attention import FullSelfAttention, full_attention

B, L, H, D = 2, 7, 2, 4


def numpy_attention(q, k, v, causal=False, mask=None, self_mask=False):
  """Loop-level reference: replacement masks -1e9, then own position -1e5."""
  q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
  b, n, h, _ = q.shape
  out = np.zeros_like(v)
  for bi in range(b):
    for hi in range(h):
      logits = q[bi, :, hi] @ k[bi, :, hi].T
      for i in range(n):
        for j in range(n):
          if (causal and j > i) or (mask is not None and not mask[bi, j]):
            logits[i, j] = -1e9
          if self_mask and i == j:
            logits[i, j] = -1e5
      logits -= logits.max(-1, keepdims=True)
      p = np.exp(logits)
      p /= p.sum(-1, keepdims=True)
      out[bi, :, hi] = p @ v[bi, :, hi]
  return out


def _qkv(seed=0, length=L):
  rng = np.random.RandomState(seed)
  return [rng.randn(B, length, H, D).astype(np.float32) for _ in range(3)]


PAD_MASK = np.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]], bool)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("self_mask", [False, True])
def test_full_attention_matches_numpy(causal, use_mask, self_mask):
  q, k, v = _qkv(1)
  mask = PAD_MASK if use_mask else None
  got = full_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), causal=causal,
                       mask=None if mask is None else jnp.asarray(mask), self_mask=self_mask)
  want = numpy_attention(q, k, v, causal, mask, self_mask)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_self_mask_is_soft():
  """Causal position 0 has only itself: it must attend to itself (soft mask)."""
  q, k, v = _qkv(2)
  got = full_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), causal=True,
                       self_mask=True)
  np.testing.assert_allclose(np.asarray(got[:, 0]), v[:, 0], rtol=1e-6, atol=1e-6)
  # Elsewhere the own key gets (almost) no weight: output differs from plain causal.
  plain = full_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), causal=True)
  assert not np.allclose(np.asarray(got[:, 1:]), np.asarray(plain[:, 1:]), atol=1e-3)


def test_shape_errors():
  q, k, v = _qkv(0)
  with pytest.raises(ValueError, match="mask"):
    full_attention(q, k, v, mask=jnp.ones((B, L + 1), bool))
  with pytest.raises(ValueError, match="same shape"):
    full_attention(q, k[:, :-1], v)


def _x(seed=3, d_model=6):
  return jnp.asarray(np.random.RandomState(seed).randn(B, L, d_model).astype(np.float32))


def test_module_shared_qk_params_and_math():
  x = _x()
  module = FullSelfAttention(n_heads=H, d_head=D, causal=True, shared_qk=True)
  params = module.init(jax.random.PRNGKey(0), x, deterministic=True)["params"]
  shapes = jax.tree.map(jnp.shape, params)
  assert shapes == {"query_key": {"kernel": (6, H * D)}, "value": {"kernel": (6, H * D)},
                    "out": {"kernel": (H * D, 6)}}
  mask = jnp.asarray(PAD_MASK)
  got = module.apply({"params": params}, x, mask, deterministic=True)

  xn = np.asarray(x, np.float64)
  qk = (xn @ np.asarray(params["query_key"]["kernel"])).reshape(B, L, H, D)
  kn = qk / np.sqrt(np.mean(qk ** 2, -1, keepdims=True) + 1e-6) / np.sqrt(D)
  val = (xn @ np.asarray(params["value"]["kernel"])).reshape(B, L, H, D)
  att = numpy_attention(qk, kn, val, causal=True, mask=PAD_MASK, self_mask=True)
  want = att.reshape(B, L, H * D) @ np.asarray(params["out"]["kernel"])
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_module_separate_qkv_params_and_math():
  x = _x()
  module = FullSelfAttention(n_heads=H, d_head=D)
  params = module.init(jax.random.PRNGKey(1), x, deterministic=True)["params"]
  assert sorted(params) == ["key", "out", "query", "value"]
  got = module.apply({"params": params}, x, deterministic=True)
  xn = np.asarray(x, np.float64)
  proj = lambda n: (xn @ np.asarray(params[n]["kernel"])).reshape(B, L, H, D)
  att = numpy_attention(proj("query"), proj("key") / np.sqrt(D), proj("value"))
  want = att.reshape(B, L, H * D) @ np.asarray(params["out"]["kernel"])
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_attention_dropout():
  x = _x()
  module = FullSelfAttention(n_heads=H, d_head=D, attention_dropout=0.5)
  params = module.init(jax.random.PRNGKey(0), x, deterministic=True)
  plain = FullSelfAttention(n_heads=H, d_head=D).apply(params, x, deterministic=True)
  det = module.apply(params, x, deterministic=True)
  np.testing.assert_allclose(np.asarray(det), np.asarray(plain), rtol=1e-6)
  a = module.apply(params, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
  b = module.apply(params, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)})
  assert not np.allclose(np.asarray(a), np.asarray(det), atol=1e-4)
  assert not np.allclose(np.asarray(a), np.asarray(b), atol=1e-4)
  # deterministic as a module attribute.
  attr = FullSelfAttention(n_heads=H, d_head=D, attention_dropout=0.5, deterministic=True)
  np.testing.assert_allclose(np.asarray(attr.apply(params, x)), np.asarray(plain), rtol=1e-6)


def test_bfloat16_close_to_float32():
  x = _x()
  module = FullSelfAttention(n_heads=H, d_head=D, causal=True, shared_qk=True)
  params = module.init(jax.random.PRNGKey(0), x, deterministic=True)
  f32 = module.apply(params, x, deterministic=True)
  bf16 = FullSelfAttention(n_heads=H, d_head=D, causal=True, shared_qk=True,
                           dtype=jnp.bfloat16).apply(params, x, deterministic=True)
  assert bf16.dtype == jnp.bfloat16
  assert jax.tree.leaves(params)[0].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(bf16, np.float32), np.asarray(f32), atol=0.1, rtol=0.1)


@pytest.mark.parametrize("shape, n_heads, d_head, match", [
    # n_heads=1 used to treat the positions as the batch and return a [8, 1, 6] result.
    ((8, 6), 1, D, r"\[batch, length, d_model\], got shape \(8, 6\); add a batch axis"),
    ((8, 6), H, D, r"\[batch, length, d_model\], got shape \(8, 6\); add a batch axis"),
    ((B, 0, 6), H, D, "at least one position"),
    ((B, 8, 6), 0, D, "n_heads must be >= 1, got 0"),
    ((B, 8, 6), H, 0, "d_head must be >= 1, got 0"),
])
def test_module_rejects_bad_input_shapes_and_sizes(shape, n_heads, d_head, match):
  module = FullSelfAttention(n_heads=n_heads, d_head=d_head)
  with pytest.raises(ValueError, match=match):
    module.init(jax.random.PRNGKey(0), jnp.ones(shape), deterministic=True)
