"""Tests for reformer_jax.layers.local_attention against plain banded attention in numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.layers.full_attention import full_attention
from reformer_jax.layers.local_attention import LocalSelfAttention, local_attention

B, H, D = 2, 2, 4


def banded_attention(q, k, v, chunk_len, n_before, n_after, causal=False, mask=None):
  """Full softmax attention where query i sees key j iff chunk(j) - chunk(i) lies in
  [-n_before, n_after] (no wrap-around), j <= i if causal, and mask[j]; masked = -1e9."""
  q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
  b, n, h, _ = q.shape
  i = np.arange(n)[:, None]
  j = np.arange(n)[None, :]
  offset = j // chunk_len - i // chunk_len
  allowed = (offset >= -n_before) & (offset <= n_after)
  if causal:
    allowed &= j <= i
  out = np.zeros_like(v)
  for bi in range(b):
    keep = allowed if mask is None else allowed & mask[bi][None, :]
    for hi in range(h):
      logits = np.where(keep, q[bi, :, hi] @ k[bi, :, hi].T, -1e9)
      p = np.exp(logits - logits.max(-1, keepdims=True))
      out[bi, :, hi] = (p / p.sum(-1, keepdims=True)) @ v[bi, :, hi]
  return out


def _qkv(length, seed=0):
  rng = np.random.RandomState(seed)
  return [rng.randn(B, length, H, D).astype(np.float32) for _ in range(3)]


def _end_padding(length, n_pad):
  mask = np.ones((B, length), bool)
  mask[0, length - n_pad:] = False
  return mask


@pytest.mark.parametrize("length,chunk_len,n_before,n_after,causal,n_pad", [
    (16, 4, 1, 0, False, 0),
    (16, 4, 1, 1, False, 0),
    (13, 4, 1, 0, True, 0),     # not a multiple of chunk_len
    (13, 4, 2, 1, False, 3),
    (11, 3, 0, 0, True, 2),
    (10, 4, 1, 0, True, 4),
    (9, 2, 0, 2, False, 0),
])
@pytest.mark.parametrize("steps", [None, 1, 2])
def test_matches_banded_full_attention(length, chunk_len, n_before, n_after, causal, n_pad,
                                       steps):
  """`steps`: chunks per loop step (None: all at once; 1, 2: windows cross the steps)."""
  q, k, v = _qkv(length, seed=length + chunk_len)
  mask = _end_padding(length, n_pad) if n_pad else None
  got = local_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), chunk_len=chunk_len,
                        n_chunks_before=n_before, n_chunks_after=n_after, causal=causal,
                        mask=None if mask is None else jnp.asarray(mask),
                        chunks_per_step=steps)
  assert got.shape == (B, length, H, D)
  want = banded_attention(q, k, v, chunk_len, n_before, n_after, causal, mask)
  real = np.ones((B, length), bool) if mask is None else mask
  np.testing.assert_allclose(np.asarray(got)[real], want[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [None, 1, 3])
def test_gradient_matches_plain_banded_attention(steps):
  """Gradients through the step loop (scatter-added row gradients) vs plain autodiff."""
  length, chunk_len, n_before, n_after = 18, 3, 1, 1
  q, k, v = (jnp.asarray(t) for t in _qkv(length, seed=5))
  mask = jnp.asarray(_end_padding(length, 2))
  cot = jnp.asarray(np.random.RandomState(6).randn(B, length, H, D).astype(np.float32))
  i, j = np.arange(length)[:, None], np.arange(length)[None, :]
  offset = j // chunk_len - i // chunk_len
  band = jnp.asarray((offset >= -n_before) & (offset <= n_after))

  def plain(q, k, v):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    logits = jnp.where(band[None, None] & mask[:, None, None, :], logits, -1e9)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v)

  ours = lambda q, k, v: local_attention(q, k, v, chunk_len=chunk_len, n_chunks_before=n_before,
                                         n_chunks_after=n_after, mask=mask,
                                         chunks_per_step=steps)
  loss = lambda f: lambda *t: jnp.sum(f(*t) * cot * mask[:, :, None, None])
  got = jax.jit(jax.grad(loss(ours), (0, 1, 2)))(q, k, v)
  want = jax.jit(jax.grad(loss(plain), (0, 1, 2)))(q, k, v)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5)


@pytest.mark.parametrize("length,chunk_len,n_before", [(10, 16, 1), (10, 10, 0), (16, 4, 3)])
def test_equals_full_causal_attention_when_window_covers_sequence(length, chunk_len, n_before):
  q, k, v = (jnp.asarray(t) for t in _qkv(length, seed=5))
  mask = jnp.asarray(_end_padding(length, 2))
  got = local_attention(q, k, v, chunk_len=chunk_len, n_chunks_before=n_before, causal=True,
                        mask=mask)
  want = full_attention(q, k, v, causal=True, mask=mask)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_no_wrap_around():
  """Chunk 0 must not see the last chunk (HF/trax wrap-around would)."""
  q, k, v = (jnp.asarray(t) for t in _qkv(12, seed=6))
  attn = lambda k, v: local_attention(q, k, v, chunk_len=4, n_chunks_before=1)
  base = attn(k, v)
  k2, v2 = k.at[:, 8:].add(3.), v.at[:, 8:].add(3.)
  changed = attn(k2, v2)
  np.testing.assert_allclose(np.asarray(changed[:, :4]), np.asarray(base[:, :4]), rtol=1e-6)
  assert not np.allclose(np.asarray(changed[:, 8:]), np.asarray(base[:, 8:]))


def test_never_materialises_full_logits():
  length, chunk_len = 64, 8
  q, k, v = (jnp.asarray(t) for t in _qkv(length))
  jaxpr = jax.make_jaxpr(lambda q, k, v: local_attention(
      q, k, v, chunk_len=chunk_len, n_chunks_before=1, causal=True))(q, k, v)
  sizes = [np.prod(var.aval.shape) for eqn in jaxpr.jaxpr.eqns for var in eqn.outvars]
  assert max(sizes) < B * H * length * length / 2


def _module_and_params(causal, x, **kw):
  module = LocalSelfAttention(n_heads=H, d_head=D, chunk_len=4, n_chunks_before=1,
                              causal=causal, **kw)
  params = module.init(jax.random.PRNGKey(0), x, deterministic=True)
  return module, params


def _x(length, seed=7, d_model=6):
  return jnp.asarray(np.random.RandomState(seed).randn(B, length, d_model).astype(np.float32))


def test_module_params_and_math():
  x = _x(10)
  module, variables = _module_and_params(False, x)
  params = variables["params"]
  assert jax.tree.map(jnp.shape, params) == {
      "query": {"kernel": (6, H * D)}, "key": {"kernel": (6, H * D)},
      "value": {"kernel": (6, H * D)}, "out": {"kernel": (H * D, 6)}}
  got = module.apply(variables, x, deterministic=True)
  xn = np.asarray(x, np.float64)
  proj = lambda n: (xn @ np.asarray(params[n]["kernel"])).reshape(B, 10, H, D)
  att = banded_attention(proj("query"), proj("key") / np.sqrt(D), proj("value"), 4, 1, 0)
  want = att.reshape(B, 10, H * D) @ np.asarray(params["out"]["kernel"])
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_causality():
  length, cut = 14, 6
  x = _x(length)
  module, params = _module_and_params(True, x)
  y = module.apply(params, x, deterministic=True)
  x2 = x.at[:, cut + 1:].set(jnp.asarray(np.random.RandomState(8).randn(B, length - cut - 1, 6),
                                         jnp.float32))
  y2 = module.apply(params, x2, deterministic=True)
  np.testing.assert_allclose(np.asarray(y2[:, :cut + 1]), np.asarray(y[:, :cut + 1]), rtol=1e-6)
  assert not np.allclose(np.asarray(y2[:, cut + 1:]), np.asarray(y[:, cut + 1:]))


@pytest.mark.parametrize("causal", [False, True])
def test_padding_invariance(causal):
  length = 11
  x = _x(length)
  mask = np.ones((B, length), bool)
  mask[0, 7:] = False
  mask[1, 2] = False  # padding in the middle too
  module, params = _module_and_params(causal, x, n_chunks_after=1)
  y = module.apply(params, x, jnp.asarray(mask), deterministic=True)
  noise = jnp.asarray(np.random.RandomState(9).randn(B, length, 6), jnp.float32)
  x2 = jnp.where(jnp.asarray(mask)[..., None], x, noise)
  y2 = module.apply(params, x2, jnp.asarray(mask), deterministic=True)
  np.testing.assert_allclose(np.asarray(y2)[mask], np.asarray(y)[mask], rtol=1e-5, atol=1e-6)
  assert not np.allclose(np.asarray(y2)[~mask], np.asarray(y)[~mask])


def test_dropout_and_errors():
  x = _x(9)
  module, params = _module_and_params(True, x, attention_dropout=0.3)
  det = module.apply(params, x, deterministic=True)
  drop = module.apply(params, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(3)})
  assert not np.allclose(np.asarray(det), np.asarray(drop))
  q, k, v = (jnp.asarray(t) for t in _qkv(8))
  with pytest.raises(ValueError, match="chunk_len"):
    local_attention(q, k, v, chunk_len=0)
  with pytest.raises(ValueError, match="n_chunks_before"):
    local_attention(q, k, v, chunk_len=4, n_chunks_before=-1)


@pytest.mark.parametrize("shape, n_heads, d_head, match", [
    ((8, 6), H, D, r"\[batch, length, d_model\], got shape \(8, 6\); add a batch axis"),
    ((B, 0, 6), H, D, "at least one position"),
    ((B, 8, 6), 0, D, "n_heads must be >= 1, got 0"),
    ((B, 8, 6), H, 0, "d_head must be >= 1, got 0"),
])
def test_module_rejects_bad_input_shapes_and_sizes(shape, n_heads, d_head, match):
  module = LocalSelfAttention(n_heads=n_heads, d_head=d_head, chunk_len=4)
  with pytest.raises(ValueError, match=match):
    module.init(jax.random.PRNGKey(0), jnp.ones(shape), deterministic=True)


def wrapped_chunk_attention(q, k, v, chunk_len, n_before, n_after, mask=None):
  """HF's `_look_adjacent` in numpy: chunk c's queries attend to the keys of chunks
  (c + s) mod n_chunks for s in [-n_before, n_after], a chunk listed twice counted twice."""
  q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
  b, n, h, _ = q.shape
  n_chunks = n // chunk_len
  out = np.zeros_like(v)
  for c in range(n_chunks):
    keys = np.concatenate([np.arange(chunk_len) + ((c + s) % n_chunks) * chunk_len
                           for s in range(-n_before, n_after + 1)])
    rows = slice(c * chunk_len, (c + 1) * chunk_len)
    for bi in range(b):
      keep = np.ones(len(keys), bool) if mask is None else mask[bi][keys]
      for hi in range(h):
        logits = np.where(keep[None], q[bi, rows, hi] @ k[bi, keys, hi].T, -1e9)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        out[bi, rows, hi] = (p / p.sum(-1, keepdims=True)) @ v[bi, keys, hi]
  return out


@pytest.mark.parametrize("length,chunk_len,n_before,n_after,n_pad", [
    (16, 4, 1, 0, 0),
    (16, 4, 1, 1, 2),
    (8, 4, 1, 1, 0),    # two chunks: each window holds the other chunk twice
    (12, 4, 0, 2, 1),
])
@pytest.mark.parametrize("steps", [None, 1])
def test_wrap_matches_hf_look_adjacent(length, chunk_len, n_before, n_after, n_pad, steps):
  q, k, v = _qkv(length, seed=length + n_after)
  mask = _end_padding(length, n_pad) if n_pad else None
  got = local_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), chunk_len=chunk_len,
                        n_chunks_before=n_before, n_chunks_after=n_after, wrap=True,
                        mask=None if mask is None else jnp.asarray(mask),
                        chunks_per_step=steps)
  want = wrapped_chunk_attention(q, k, v, chunk_len, n_before, n_after, mask)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
  unwrapped = local_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                              chunk_len=chunk_len, n_chunks_before=n_before,
                              n_chunks_after=n_after)
  assert not np.allclose(np.asarray(unwrapped), want, atol=1e-3)
