"""Tests for LSH self-attention against plainly written references."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.layers import lsh_attention as lsh

MASK, SELF = -1e9, -1e5
ALLOWED, MASKED, IS_SELF = 0, 1, 2


def _normal(seed, *shape):
  return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def _qkv(seed, batch, length, heads, d_head):
  return (_normal(seed, batch, length, heads, d_head),
          _normal(seed + 1000, batch, length, heads, d_head))


def _factors(n_buckets):
  return (n_buckets,) if isinstance(n_buckets, int) else tuple(n_buckets)


def _rotations(seed, heads, d_head, n_hashes, n_buckets):
  return _normal(seed, heads, d_head, n_hashes, sum(_factors(n_buckets)) // 2)


def _params(seed, d_model, heads, d_head):
  """A parameter tree shaped like LSHSelfAttention's."""
  dense = lambda i, n, m: {"kernel": _normal(seed + i, n, m) / np.sqrt(n)}
  return {"params": {"query_key": dense(0, d_model, heads * d_head),
                     "value": dense(1, d_model, heads * d_head),
                     "out": dense(2, heads * d_head, d_model)}}


def _np_buckets(x, rot, factors):
  """Buckets `[length]` of `x` `[length, d]` for one head and round, rot `[d, sum // 2]`."""
  rotated = np.asarray(x, np.float64) @ np.asarray(rot, np.float64)
  code, start, scale = np.zeros(len(x), np.int64), 0, 1
  for f in factors:
    part = rotated[:, start:start + f // 2]
    code += scale * np.argmax(np.concatenate([part, -part], axis=1), axis=1)
    start, scale = start + f // 2, scale * f
  return code


def reference_plan(qk, rotations, n_buckets, chunk_len, before, after, causal, strict, mask,
                   correct_duplicates):
  """Explicit per-query key lists: `(key_pos, state, log_count)`, each `[b, h, R, Lp, W]`.

  Every round sorts the padded positions by (bucket, position), padding in an extra last
  bucket; the rounds are concatenated and query entry o sees the chunks o // c - before ..
  o // c + after modulo the number of chunks. Strict causal: only keys of the same bucket
  whose sorted offset lies in [o - before * c, o].
  """
  qk = np.asarray(qk)
  batch, length, heads, _ = qk.shape
  factors = _factors(n_buckets)
  n_total, n_hashes = math.prod(factors), rotations.shape[2]
  c = chunk_len
  padded = -(-length // c) * c
  real = np.ones((batch, padded), bool)
  real[:, length:] = False
  if mask is not None:
    real[:, :length] = np.asarray(mask)
  width = (1 + before + after) * c
  shape = (batch, heads, n_hashes, padded, width)
  key_pos, state = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
  log_count = np.zeros(shape, np.float32)
  for b in range(batch):
    for h in range(heads):
      x = np.zeros((padded, qk.shape[-1]))
      x[:length] = qk[b, :, h]
      bucket = np.zeros((n_hashes, padded), np.int64)
      seq = []  # sorted entries (round, position), rounds concatenated
      for r in range(n_hashes):
        code = np.where(real[b], _np_buckets(x, rotations[h, :, r], factors), n_total)
        bucket[r] = code + r * (n_total + 1)
        seq += [(r, p) for p in sorted(range(padded), key=lambda p: (bucket[r, p], p))]
      offset = {entry: o for o, entry in enumerate(seq)}
      n_chunks = len(seq) // c

      def window(o):
        return [((o // c + s) % n_chunks) * c + j for s in range(-before, after + 1)
                for j in range(c)]

      def visible(o, ko):
        if not strict:
          return True
        return (bucket[seq[o]] == bucket[seq[ko]]) and o - before * c <= ko <= o

      counts = {}
      for p in range(padded):
        for r in range(n_hashes):
          o = offset[(r, p)]
          for ko in window(o):
            if visible(o, ko):
              counts[p, seq[ko][1]] = counts.get((p, seq[ko][1]), 0) + 1
      for r in range(n_hashes):
        for p in range(padded):
          o = offset[(r, p)]
          for slot, ko in enumerate(window(o)):
            pk = seq[ko][1]
            key_pos[b, h, r, p, slot] = pk
            ok = real[b, pk] and (not causal or pk <= p) and visible(o, ko)
            state[b, h, r, p, slot] = IS_SELF if pk == p else (ALLOWED if ok else MASKED)
            if correct_duplicates and (p, pk) in counts:
              log_count[b, h, r, p, slot] = np.log(counts[p, pk])
  return key_pos, state, log_count


def _softmax_and_lse(logits, xp):
  top = xp.max(logits, axis=-1, keepdims=True)
  unnormalised = xp.exp(logits - top)
  total = xp.sum(unnormalised, axis=-1, keepdims=True)
  return unnormalised / total, (top + xp.log(total))[..., 0]


def _shared_keys(qk, xp):
  return qk / xp.sqrt(xp.mean(qk * qk, axis=-1, keepdims=True) + 1e-6) / np.sqrt(qk.shape[-1])


def reference_apply(qk, v, plan, xp=np):
  """Per-round softmax over the planned key lists, rounds combined by softmax(lse).

  `xp=np` computes in float64; `xp=jnp` is differentiable.
  """
  key_pos, state, log_count = plan
  batch, length, heads, _ = qk.shape
  padded = key_pos.shape[3]
  widths = ((0, 0), (0, 0), (0, padded - length), (0, 0))
  q = xp.pad(xp.swapaxes(xp.asarray(qk), 1, 2), widths)  # [b, h, Lp, d]
  vals = xp.pad(xp.swapaxes(xp.asarray(v), 1, 2), widths)
  k = _shared_keys(q, xp)
  bi = np.arange(batch)[:, None, None, None, None]
  hi = np.arange(heads)[None, :, None, None, None]
  keys, values = k[bi, hi, key_pos], vals[bi, hi, key_pos]  # [b, h, R, Lp, W, d]
  logits = xp.einsum("bhpd,bhrpwd->bhrpw", q, keys) - log_count
  logits = xp.where(state == MASKED, MASK, logits)
  logits = xp.where(state == IS_SELF, SELF, logits)
  probs, lse = _softmax_and_lse(logits, xp)
  out = xp.einsum("bhrpw,bhrpwd->bhrpd", probs, values)
  weights, _ = _softmax_and_lse(xp.swapaxes(lse, 2, 3), xp)  # [b, h, Lp, R]
  out = xp.sum(out * xp.swapaxes(weights, 2, 3)[..., None], axis=2)
  return xp.swapaxes(out[:, :, :length], 1, 2)


def full_shared_qk(qk, v, causal=False, mask=None):
  """Plain O(L^2) shared-QK attention with HF's masks (float64 numpy)."""
  qk, v = np.asarray(qk, np.float64), np.asarray(v, np.float64)
  length = qk.shape[1]
  logits = np.einsum("bqhd,bkhd->bhqk", qk, _shared_keys(qk, np))
  pos = np.arange(length)
  keep = np.ones((qk.shape[0], 1, length, length), bool)
  if causal:
    keep &= (pos[None, :] <= pos[:, None])[None, None]
  if mask is not None:
    keep &= np.asarray(mask)[:, None, None, :]
  logits = np.where(keep, logits, MASK)
  logits = np.where((pos[:, None] == pos[None, :])[None, None], SELF, logits)
  return np.einsum("bhqk,bkhd->bqhd", _softmax_and_lse(logits, np)[0], v)


def _random_mask(seed, batch, length, n_pad):
  rng = np.random.RandomState(seed)
  mask = np.ones((batch, length), bool)
  for b in range(batch):
    mask[b, rng.choice(length, n_pad, replace=False)] = False
  return mask


def _lsh(**settings):
  """`lsh_attention` jitted for fixed settings: `f(qk, v, rotations, mask)`."""
  return jax.jit(lambda qk, v, rot, mask: lsh.lsh_attention(qk, v, rot, mask=mask, **settings))


# (length, chunk_len, n_buckets, n_hashes, before, after, causal, strict, n_pad, dups)
REFERENCE_CASES = [
    (24, 4, 4, 1, 1, 0, False, False, 0, False),
    (22, 4, [2, 4], 2, 1, 1, False, False, 3, True),
    (24, 4, 6, 4, 2, 0, True, False, 2, True),
    (21, 4, 4, 4, 1, 0, True, True, 3, True),
    (12, 4, 4, 1, 2, 1, False, False, 0, True),  # the window wraps onto itself
    (20, 4, [4, 2], 2, 2, 0, True, True, 0, False),
]


@pytest.mark.parametrize("steps", [None, 1, 2])
@pytest.mark.parametrize("case", REFERENCE_CASES)
def test_matches_brute_force_reference(case, steps):
  """`steps`: chunks per loop step (None: all at once; 1, 2: windows cross the steps)."""
  length, c, n_buckets, n_hashes, before, after, causal, strict, n_pad, dups = case
  qk, v = _qkv(length + n_hashes, 2, length, 2, 4)
  rot = _rotations(7, 2, 4, n_hashes, n_buckets)
  mask = _random_mask(length, 2, length, n_pad)
  out = _lsh(n_buckets=n_buckets, chunk_len=c, n_chunks_before=before, n_chunks_after=after,
             causal=causal, strict_causal=strict, correct_duplicates=dups,
             chunks_per_step=steps)(qk, v, rot, mask)
  plan = reference_plan(qk, rot, n_buckets, c, before, after, causal, strict, mask, dups)
  expected = reference_apply(qk, v, plan)
  np.testing.assert_allclose(np.asarray(out)[mask], expected[mask], atol=1e-5)


@pytest.mark.parametrize("before,dups,causal", [(0, False, False), (1, True, False),
                                                (1, False, True)])
def test_one_chunk_per_round_is_full_attention(before, dups, causal):
  """With chunk_len = length each round is one chunk; n_chunks_before=1 sees keys twice."""
  length = 12
  qk, v = _qkv(3, 2, length, 2, 4)
  mask = _random_mask(1, 2, length, 2)
  rot = _rotations(0, 2, 4, 2, 4)
  out = _lsh(n_buckets=4, chunk_len=length, n_chunks_before=before, causal=causal,
             strict_causal=False, correct_duplicates=dups)(qk, v, rot, mask)
  expected = full_shared_qk(qk, v, causal, mask)
  np.testing.assert_allclose(np.asarray(out)[mask], expected[mask], atol=1e-5)


def test_short_sequence_falls_back_to_full_attention_without_hash_rng():
  x = _normal(0, 2, 10, 8)
  mask = _random_mask(0, 2, 10, 2)
  layer = lsh.LSHSelfAttention(n_heads=2, d_head=4, n_hashes=2, chunk_len=16, causal=True,
                               deterministic=True)
  params = jax.jit(layer.init)(jax.random.PRNGKey(1), x)
  assert jax.tree_util.tree_map(np.shape, params) == jax.tree_util.tree_map(
      np.shape, _params(0, 8, 2, 4))
  out = jax.jit(layer.apply)(params, x, jnp.asarray(mask))  # no 'hash' rng needed
  p = {name: np.asarray(w["kernel"], np.float64) for name, w in params["params"].items()}
  x64 = np.asarray(x, np.float64)
  qk = (x64 @ p["query_key"]).reshape(2, 10, 2, 4)
  v = (x64 @ p["value"]).reshape(2, 10, 2, 4)
  expected = full_shared_qk(qk, v, True, mask).reshape(2, 10, 8) @ p["out"]
  np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("width", [1, 2, 3, 5, 8, 9, 16, 18, 64])
def test_signed_argmax_is_first_argmax_of_both_signs(width):
  """`_signed_argmax(p)` equals argmax over `[p, -p]` (first maximum on ties), with many
  ties (small integers, also of opposite signs), zeros, -0.0 and NaN."""
  rng = np.random.RandomState(width)
  part = rng.randint(-2, 3, size=(300, width)).astype(np.float32)
  part[:10] = 0.
  part[10:20] = -0.
  part[20:30, rng.randint(width)] = np.nan
  part[30:] += rng.randn(270, width).astype(np.float32) * (rng.rand(270, 1) < 0.5)
  expected = np.argmax(np.concatenate([part, -part], axis=-1), axis=-1)
  got = jax.jit(lsh._signed_argmax)(jnp.asarray(part))
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("n_buckets", [128, (64, 32), (6, 10), 36])
def test_hash_vectors_match_numpy(n_buckets):
  """Buckets of every head and round against numpy's argmax over `[xR; -xR]`, for bucket
  counts whose rotation slices are wide (halved before the reduction) and odd."""
  qk, _ = _qkv(5, 2, 300, 2, 8)
  rot = _rotations(6, 2, 8, 2, n_buckets)
  got = np.asarray(jax.jit(lsh.hash_vectors, static_argnums=2)(qk, rot, n_buckets))
  assert got.shape == (2, 2, 2, 300)
  for b in range(2):
    for h in range(2):
      for r in range(2):
        np.testing.assert_array_equal(
            got[b, h, r], _np_buckets(qk[b, :, h], rot[h, :, r], _factors(n_buckets)))


def _sort_operands(fn, *args):
  """Operand counts of the sorts in `fn`'s jaxpr, nested jaxprs included."""
  counts = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "sort":
        counts.append(len(eqn.invars))
      for value in eqn.params.values():
        inner = getattr(value, "jaxpr", value)
        if hasattr(inner, "eqns"):
          walk(inner)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return counts


def test_sort_rounds_by_keys_matches_stable_argsort():
  """The uint32-key sort orders each round by (bucket, position) exactly as a stable
  argsort does: few buckets (many ties), three rounds, padding in its own bucket."""
  n_total, padded = 5, 96
  raw = jax.random.randint(jax.random.PRNGKey(0), (2, 2, 3, padded), 0, n_total)
  real = jnp.arange(padded)[None, :] < jnp.array([[80], [96]])
  buckets = lsh.lsh_buckets(raw, real, n_total)
  want = np.argsort(np.asarray(buckets), axis=-1, kind="stable")
  got = jax.jit(lsh.sort_rounds, static_argnums=1)(buckets, n_total + 1)
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(got, want)
  assert _sort_operands(lambda b: lsh.sort_rounds(b, n_total + 1), buckets) == [1]
  # Keys that would not fit in 32 bits, or an unknown bound: the stable argsort.
  for n_values in (2 ** 32 // padded + 1, None):
    assert _sort_operands(lambda b: lsh.sort_rounds(b, n_values), buckets) == [2]
    np.testing.assert_array_equal(lsh.sort_rounds(buckets, n_values), want)


def test_sort_rounds_out_of_range_buckets_still_permute():
  """Buckets outside a round's range (bad `buckets=`) sort as its nearest end: each round
  is still a permutation of the positions, ordered by the clipped buckets."""
  buckets = jnp.array([[[[3, -7, 50, 0, 3, 9, -1, 2]]]])
  got = np.asarray(lsh.sort_rounds(buckets, 4))
  np.testing.assert_array_equal(got[0, 0, 0], [1, 3, 6, 7, 0, 2, 4, 5])


def test_returned_buckets_replace_hashing():
  """`return_buckets` gives the round-offset buckets of `hash_vectors`; passed back as
  `buckets=` they replace the hashing (no 'hash' rng needed) and give the same output."""
  x = _normal(0, 2, 40, 8)
  layer = lsh.LSHSelfAttention(n_heads=2, d_head=4, n_hashes=2, n_buckets=4, chunk_len=8,
                               causal=True, deterministic=True)
  params = layer.init({"params": jax.random.PRNGKey(1), "hash": jax.random.PRNGKey(2)}, x)
  apply = jax.jit(layer.apply, static_argnames="return_buckets")
  rotations = lsh.draw_rotations(jax.random.PRNGKey(3), 2, 4, 2, 4)
  out, buckets = apply(params, x, rotations=rotations, return_buckets=True)
  assert buckets.shape == (2, 2, 2, 40) and buckets.dtype == jnp.int32
  qk = (x @ params["params"]["query_key"]["kernel"]).reshape(2, 40, 2, 4)
  hashed = lsh.hash_vectors(qk, rotations, 4)
  np.testing.assert_array_equal(buckets, hashed + 5 * np.arange(2)[None, None, :, None])
  np.testing.assert_array_equal(apply(params, x, buckets=buckets), out)  # no 'hash' rng
  other = lsh.draw_rotations(jax.random.PRNGKey(4), 2, 4, 2, 4)
  assert not np.allclose(apply(params, x, rotations=other), out)  # other buckets
  np.testing.assert_array_equal(apply(params, x, rotations=other, buckets=buckets), out)
  with pytest.raises(ValueError, match="buckets must be int"):
    apply(params, x, buckets=buckets[:, :, :1])


def test_more_rounds_approach_full_attention():
  """Tokens near one of 32 centres attend almost only to their cluster; rounds find it.

  Without the duplicate correction a key seen in several rounds is over-weighted, so the
  error stays larger.
  """
  rng = np.random.RandomState(0)
  length, d_head = 128, 16
  centres = rng.randn(32, d_head)
  centres *= 10. / np.linalg.norm(centres, axis=1, keepdims=True)
  x = centres[rng.randint(32, size=length)] + 0.2 * rng.randn(length, d_head)
  qk = jnp.asarray(x[None, :, None], jnp.float32)
  v = jnp.asarray(rng.randn(1, length, 1, d_head), jnp.float32)
  expected = full_shared_qk(qk, v)
  mask = np.ones((1, length), bool)
  errors = {}
  for n_hashes, dups in ((1, True), (8, True), (8, False)):
    rot = _rotations(3, 1, d_head, n_hashes, 16)
    out = _lsh(n_buckets=16, chunk_len=8, correct_duplicates=dups)(qk, v, rot, mask)
    errors[n_hashes, dups] = float(np.mean(np.abs(np.asarray(out) - expected)))
  assert errors[8, True] < 0.2 * errors[1, True], errors
  assert errors[8, True] < 0.05, errors
  assert errors[8, True] < 0.5 * errors[8, False], errors


def _causal_apply(strict):
  layer = lsh.LSHSelfAttention(n_heads=2, d_head=4, n_hashes=2, n_buckets=4, chunk_len=4,
                               causal=True, strict_causal=strict, deterministic=True)
  return layer, jax.jit(lambda p, x, rot: layer.apply(p, x, rotations=rot))


def _future_changes(strict):
  """Max change of outputs <= i when the inputs after i change, over several i."""
  length = 24
  x = _normal(0, 1, length, 8)
  _, apply = _causal_apply(strict)
  params = _params(1, 8, 2, 4)
  rot = _rotations(2, 2, 4, 2, 4)
  out = apply(params, x, rot)
  change = 0.
  for trial, i in enumerate((2, 9, 14, 20)):
    changed = x.copy()
    changed[:, i + 1:] = _normal(10 + trial, 1, length - i - 1, 8)
    changed = apply(params, changed, rot)
    change = max(change, float(jnp.max(jnp.abs(changed[:, :i + 1] - out[:, :i + 1]))))
  return change


def test_strict_causal_does_not_see_the_future():
  assert _future_changes(strict=True) < 1e-6


def test_hf_trax_causal_windows_leak_the_future():
  """Documents the HF/trax defect that strict_causal fixes.

  Without it, the future tokens' buckets move the chunk boundaries of the sorted sequence,
  which changes which earlier keys a query sees.
  """
  assert _future_changes(strict=False) > 1e-3


@pytest.mark.parametrize("causal", [False, True])
def test_padding_content_is_ignored(causal):
  length = 22
  mask = _random_mask(5, 2, length, 5)
  mask[0, :2] = False
  x = _normal(0, 2, length, 8)
  x2 = np.where(mask[..., None], x, 10. * _normal(1, 2, length, 8))
  layer = lsh.LSHSelfAttention(n_heads=2, d_head=4, n_hashes=3, n_buckets=[2, 4], chunk_len=4,
                               n_chunks_after=0 if causal else 1, causal=causal,
                               deterministic=True)
  params = _params(2, 8, 2, 4)
  apply = jax.jit(lambda t: layer.apply(params, t, mask,
                                        rngs={"hash": jax.random.PRNGKey(4)}))
  out, out2 = np.asarray(apply(x)), np.asarray(apply(x2))
  np.testing.assert_allclose(out2[mask], out[mask], atol=1e-6)
  assert not np.allclose(out2[~mask], out[~mask], atol=1e-3)


def test_hash_rng_determines_buckets_and_output():
  x = _normal(0, 1, 32, 8)
  # n_buckets=None resolves to the factorised (4, 4) for length 32, chunk_len 4.
  layer = lsh.LSHSelfAttention(n_heads=2, d_head=4, n_hashes=2, chunk_len=4,
                               deterministic=True)
  params = _params(1, 8, 2, 4)
  apply = jax.jit(lambda key: layer.apply(params, x, rngs={"hash": key}))
  out5 = apply(jax.random.PRNGKey(5))
  np.testing.assert_array_equal(out5, apply(jax.random.PRNGKey(5)))
  assert not np.allclose(out5, apply(jax.random.PRNGKey(6)), atol=1e-3)

  qk, _ = _qkv(0, 1, 32, 2, 4)
  rots = [lsh.draw_rotations(jax.random.PRNGKey(s), 2, 4, 2, [4, 2]) for s in (5, 5, 6)]
  buckets = [np.asarray(lsh.hash_vectors(qk, rot, [4, 2])) for rot in rots]
  np.testing.assert_array_equal(buckets[0], buckets[1])
  assert np.mean(buckets[0] != buckets[2]) > 0.3
  expected = np.stack([np.stack([_np_buckets(qk[0, :, h], rots[0][h, :, r], (4, 2))
                                 for r in range(2)]) for h in range(2)])
  np.testing.assert_array_equal(buckets[0][0], expected)
  assert set(np.unique(buckets[0])) == set(range(8))


def test_resolve_n_buckets_follows_hf_default():
  def hf_default(length, chunk_len):
    power = (2 * (length // chunk_len)).bit_length() - 1
    limit = 2 * max(int((length // chunk_len) ** 0.5), chunk_len)
    return 2 ** power if 2 ** power <= limit else (2 ** (power // 2), 2 ** (power - power // 2))

  for length, chunk_len in [(4096, 64), (524288, 64), (1000, 64), (65536, 256), (256, 8)]:
    assert lsh.resolve_n_buckets(None, length, chunk_len) == hf_default(length, chunk_len)
  assert lsh.resolve_n_buckets(None, 524288, 64) == (128, 128)
  assert lsh.resolve_n_buckets([64, 128], 10, 1) == (64, 128)
  assert lsh.resolve_n_buckets(32, 10, 1) == 32


def test_errors_explain_the_fix():
  qk, v = _qkv(0, 1, 16, 2, 4)
  rot = _rotations(0, 2, 4, 1, 4)
  with pytest.raises(ValueError, match="even"):
    lsh.lsh_attention(qk, v, rot, n_buckets=5, chunk_len=4)
  with pytest.raises(ValueError, match="even"):
    lsh.draw_rotations(jax.random.PRNGKey(0), 2, 4, 1, [4, 3])
  with pytest.raises(ValueError, match="draw_rotations"):
    lsh.lsh_attention(qk, v, rot[:, :, :, :1], n_buckets=4, chunk_len=4)
  with pytest.raises(ValueError, match="n_chunks_before >= 1"):
    lsh.lsh_attention(qk, v, rot, n_buckets=4, chunk_len=4, n_chunks_before=0, causal=True)
  with pytest.raises(ValueError, match="chunk_len"):
    lsh.lsh_attention(qk, v, rot, n_buckets=4, chunk_len=0)
  x = jnp.ones((1, 16, 8))
  layer = lsh.LSHSelfAttention(n_heads=2, d_head=4, n_buckets=4, chunk_len=4,
                               deterministic=True)
  with pytest.raises(ValueError, match=r"rngs=\{'hash': key\}"):
    layer.init(jax.random.PRNGKey(0), x)
  params = _params(0, 8, 2, 4)
  with pytest.raises(ValueError, match=r"rngs=\{'hash': key\}"):
    layer.apply(params, x)
  with pytest.raises(ValueError, match="n_hashes=1"):
    layer.apply(params, x, rotations=jnp.zeros((2, 4, 3, 2)))


def test_permute_gradient_is_a_gather():
  x, w = _normal(0, 2, 3, 10, 4), _normal(1, 2, 3, 10, 4)
  perm = np.argsort(_normal(2, 2, 3, 10), axis=-1)
  inv = np.argsort(perm, axis=-1)
  ours = lambda t: jnp.sum(lsh.permute(t, perm, inv) * w)
  plain = lambda t: jnp.sum(jnp.take_along_axis(t, perm[..., None], axis=2) * w)
  both = jax.jit(lambda t: (ours(t), plain(t), jax.grad(ours)(t), jax.grad(plain)(t)))
  value, plain_value, grad, plain_grad = both(x)
  np.testing.assert_allclose(value, plain_value, rtol=1e-6)
  np.testing.assert_allclose(grad, plain_grad, rtol=1e-6)
  assert "scatter-add" in str(jax.make_jaxpr(jax.grad(plain))(x))
  assert "scatter-add" not in str(jax.make_jaxpr(jax.grad(ours))(x))


@pytest.mark.parametrize("steps", [None, 1])
def test_gradient_matches_reference(steps):
  length, n_buckets, c = 14, 4, 4
  qk, v = _qkv(1, 2, length, 2, 4)
  rot = _rotations(3, 2, 4, 2, n_buckets)
  mask = _random_mask(2, 2, length, 2)
  cot = _normal(4, *qk.shape) * mask[..., None, None]
  plan = reference_plan(qk, rot, n_buckets, c, 1, 0, True, False, mask, True)
  ours = lambda a, b: jnp.sum(cot * lsh.lsh_attention(
      a, b, rot, n_buckets=n_buckets, chunk_len=c, causal=True, strict_causal=False,
      mask=mask, correct_duplicates=True, chunks_per_step=steps))
  ref = lambda a, b: jnp.sum(cot * reference_apply(a, b, plan, xp=jnp))
  got = jax.jit(jax.grad(ours, (0, 1)))(qk, v)
  want = jax.jit(jax.grad(ref, (0, 1)))(qk, v)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5)


def test_module_gradient_is_finite_and_dropout_is_used():
  x = _normal(0, 1, 20, 8)
  layer = lsh.LSHSelfAttention(n_heads=2, d_head=4, n_hashes=2, n_buckets=4, chunk_len=4,
                               causal=True, attention_dropout=0.5, correct_duplicates=True)
  params = _params(1, 8, 2, 4)
  rngs = {"hash": jax.random.PRNGKey(3), "dropout": jax.random.PRNGKey(4)}
  run = lambda p, det: layer.apply(p, x, deterministic=det, rngs=rngs)
  loss = lambda p: jnp.sum(run(p, False) ** 2)
  grads, eval_out, train_out = jax.jit(
      lambda p: (jax.grad(loss)(p), run(p, True), run(p, False)))(params)
  assert all(bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 0
             for g in jax.tree_util.tree_leaves(grads))
  assert not np.allclose(train_out, eval_out, atol=1e-3)



@pytest.mark.parametrize("shape, n_heads, d_head, match", [
    ((8, 6), 2, 4, r"\[batch, length, d_model\], got shape \(8, 6\); add a batch axis"),
    ((2, 0, 6), 2, 4, "at least one position"),
    ((2, 8, 6), 0, 4, "n_heads must be >= 1, got 0"),
    ((2, 8, 6), 2, 0, "d_head must be >= 1, got 0"),
])
def test_module_rejects_bad_input_shapes_and_sizes(shape, n_heads, d_head, match):
  module = lsh.LSHSelfAttention(n_heads=n_heads, d_head=d_head, n_buckets=2, chunk_len=4)
  with pytest.raises(ValueError, match=match):
    module.init({"params": jax.random.PRNGKey(0), "hash": jax.random.PRNGKey(1)},
                jnp.ones(shape), deterministic=True)
