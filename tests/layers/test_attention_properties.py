"""Property-based tests (hypothesis) of LSH and local attention against float64 numpy
full attention, over random batch sizes, lengths (chunk multiples or not), heads, masks
(rows of padding only included), causal or not, hash rounds and dtypes.

Every example compiles, so the budgets are small (`max_examples`); shapes stay tiny.
"""
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from reformer_jax.layers import local_attention as local
from reformer_jax.layers import lsh_attention as lsh

SETTINGS = settings(max_examples=8, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
TOLERANCE = {"float32": 2e-5, "bfloat16": 5e-2}


def full_attention_reference(q, k, v, keep, self_value=None):
  """float64 softmax attention, masked logits replaced by -1e9 (and, for shared QK, the
  own position's by -1e5), as the layers do.

  Args:
    q, k, v: `[b, L, h, d]`; k already scaled.
    keep: `[b, L, L]` bool, True where query i may see key j.
  """
  q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k)
  logits = np.where(keep[:, None], logits, -1e9)
  if self_value is not None:
    length = q.shape[1]
    logits = np.where(np.eye(length, dtype=bool)[None, None], self_value, logits)
  logits -= logits.max(-1, keepdims=True)
  probs = np.exp(logits)
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", probs, v)


def _keep(mask, causal, band=None):
  """`[b, L, L]`: key j real (and j <= i if causal, and within `band` [L, L])."""
  length = mask.shape[1]
  keep = np.repeat(mask[:, None, :], length, axis=1)
  pos = np.arange(length)
  if causal:
    keep &= (pos[None, :] <= pos[:, None])[None]
  if band is not None:
    keep &= band[None]
  return keep


@st.composite
def inputs(draw, max_len=20):
  """(qk or q, k, v, mask, dtype): `[batch, length, heads, d_head]` normals, a padding
  mask whose first row may be all padding."""
  batch = draw(st.integers(1, 2))
  length = draw(st.integers(1, max_len))
  heads = draw(st.integers(1, 2))
  d_head = draw(st.sampled_from([2, 4]))
  dtype = draw(st.sampled_from(["float32", "bfloat16"]))
  seed = draw(st.integers(0, 2 ** 16))
  rng = np.random.default_rng(seed)
  mask = rng.random((batch, length)) < draw(st.sampled_from([1.0, 0.7]))
  if draw(st.booleans()):
    mask[0] = False                       # a row of padding only
  tensors = [rng.standard_normal((batch, length, heads, d_head)).astype(np.float32)
             for _ in range(3)]
  return tensors, mask, dtype


def _cast(tensors, dtype):
  """The tensors rounded to `dtype` (the reference gets the same rounded values)."""
  return [np.asarray(jnp.asarray(t, dtype).astype(jnp.float32)) for t in tensors]


def _check(out, want, mask, dtype):
  out = np.asarray(jnp.asarray(out, jnp.float32))
  assert np.isfinite(out).all()           # padding queries too, all-padding rows included
  np.testing.assert_allclose(out[mask], want[mask], atol=TOLERANCE[dtype],
                             rtol=TOLERANCE[dtype])


@SETTINGS
@given(inputs(), st.booleans(), st.booleans(), st.integers(1, 3), st.integers(0, 1))
def test_lsh_with_one_bucket_and_one_chunk_is_shared_qk_full_attention(
    example, causal, strict, n_hashes, before):
  """Zero rotations hash every vector to bucket 0; a chunk as long as the sequence puts
  each round in one chunk: every query sees every key (twice with a chunk before, which
  leaves the softmax unchanged), so each round, and their combination, is full attention."""
  (qk, _, v), mask, dtype = example
  qk, v = _cast([qk, v], dtype)
  batch, length, heads, d_head = qk.shape
  before = max(before, int(causal and strict))  # strict causal looks one chunk back
  rotations = jnp.zeros((heads, d_head, n_hashes, 1))
  out = jax.jit(lambda qk, v, mask: lsh.lsh_attention(
      qk, v, rotations, n_buckets=2, chunk_len=length, n_chunks_before=before,
      causal=causal, strict_causal=strict, mask=mask))(
          jnp.asarray(qk, dtype), jnp.asarray(v, dtype), jnp.asarray(mask))
  keys = qk / np.sqrt(np.mean(np.asarray(qk, np.float64) ** 2, -1, keepdims=True) + 1e-6)
  keys = keys / np.sqrt(d_head)
  want = full_attention_reference(qk, keys, v, _keep(mask, causal), self_value=-1e5)
  _check(out, want, mask, dtype)


@SETTINGS
@given(inputs(max_len=24), st.booleans(), st.integers(1, 6), st.integers(0, 2),
       st.integers(0, 1))
def test_local_attention_is_full_attention_under_the_band_mask(
    example, causal, chunk_len, before, after):
  """Query i sees key j iff chunk(j) lies in chunk(i) - before .. chunk(i) + after (any
  length: the padding to a chunk multiple is masked), when one chunk covers everything
  all keys."""
  (q, k, v), mask, dtype = example
  q, k, v = _cast([q, k, v], dtype)
  length = q.shape[1]
  out = jax.jit(lambda q, k, v, mask: local.local_attention(
      q, k, v, chunk_len=chunk_len, n_chunks_before=before, n_chunks_after=after,
      causal=causal, mask=mask))(*(jnp.asarray(t, dtype) for t in (q, k, v)),
                                 jnp.asarray(mask))
  chunk = np.arange(length) // chunk_len
  band = ((chunk[None, :] >= chunk[:, None] - before) &
          (chunk[None, :] <= chunk[:, None] + after))
  if -(-length // chunk_len) * chunk_len <= chunk_len:
    band = np.ones_like(band)           # one chunk: plain attention
  want = full_attention_reference(q, k, v, _keep(mask, causal, band))
  _check(out, want, mask, dtype)


@SETTINGS
@given(inputs(max_len=24), st.sampled_from(["lsh", "local"]), st.integers(2, 6),
       st.integers(1, 3), st.data())
def test_later_tokens_never_change_earlier_outputs(example, kind, chunk_len, n_hashes, data):
  """Causal attention (LSH strictly causal, several buckets, rounds and chunks): new
  values (and padding) at the positions after i leave the outputs of the real positions
  0 .. i as they were."""
  (qk, k, v), mask, dtype = example
  batch, length, heads, d_head = qk.shape
  i = data.draw(st.integers(0, length - 1))
  rotations = jnp.asarray(np.random.default_rng(length).standard_normal(
      (heads, d_head, n_hashes, 2)), jnp.float32)

  @jax.jit
  def attend(qk, k, v, mask):
    if kind == "lsh":
      return lsh.lsh_attention(qk, v, rotations, n_buckets=4, chunk_len=chunk_len,
                               n_chunks_before=1, causal=True, strict_causal=True,
                               mask=mask)
    return local.local_attention(qk, k, v, chunk_len=chunk_len, n_chunks_before=1,
                                 n_chunks_after=1, causal=True, mask=mask)

  rng = np.random.default_rng(i)
  changed = [np.concatenate([t[:, :i + 1], 10. * rng.standard_normal(t[:, i + 1:].shape)],
                            axis=1).astype(np.float32) for t in (qk, k, v)]
  flipped = mask.copy()
  flipped[:, i + 1:] = ~flipped[:, i + 1:]     # later padding changes too
  before = attend(*(jnp.asarray(t, dtype) for t in (qk, k, v)), jnp.asarray(mask))
  after = attend(*(jnp.asarray(t, dtype) for t in changed), jnp.asarray(flipped))
  # Real positions: a padding query sees no key, and HF's replacement masks (-1e9 for
  # padding and future keys alike) make it average every key, later ones included; no
  # real query ever sees a padding position, so nothing of it reaches a real output.
  real = mask[:, :i + 1]
  np.testing.assert_allclose(np.asarray(after[:, :i + 1], np.float32)[real],
                             np.asarray(before[:, :i + 1], np.float32)[real],
                             atol=1e-6 if dtype == "float32" else 1e-2, rtol=0)
