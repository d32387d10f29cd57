"""Tests for reformer_jax.layers.xla_cpu: each XLA:CPU workaround and its plain form give the
same values on CPU (float32 accumulation: as close to float32 streams), lowering picks the
form by the compile target, and `forced` works."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.layers import chunking, dense, lsh_attention, softmax, xla_cpu
from reformer_jax.layers.lsh_attention import draw_rotations
from reformer_jax.models import ReformerConfig, ReformerLM

FORMS = [True, False]  # the workaround, the plain form


@pytest.mark.parametrize("workaround", FORMS)
def test_row_reductions_match_numpy(workaround):
  x = np.random.default_rng(0).normal(size=(3, 5, 128)).astype(np.float32)
  with xla_cpu.forced(row_reductions=workaround):
    top = jax.jit(lambda v: softmax.row_max(v))(x)
    total = jax.jit(lambda v: softmax.row_sum(v))(x)
    probs, lse = jax.jit(lambda v: softmax.softmax_lse(v))(x)
  np.testing.assert_array_equal(top, x.max(-1, keepdims=True))
  np.testing.assert_allclose(total, x.sum(-1, keepdims=True), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(lse, jax.scipy.special.logsumexp(x, -1), rtol=1e-6)
  np.testing.assert_allclose(probs, jax.nn.softmax(x, -1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("workaround", FORMS)
def test_layer_norm_moments_match_the_formula(workaround):
  rng = np.random.default_rng(1)
  x = rng.normal(1., 2., size=(2, 7, 64)).astype(np.float32)
  scale, bias = rng.normal(size=64).astype(np.float32), rng.normal(size=64).astype(np.float32)
  with xla_cpu.forced(layer_norm_moments=workaround):
    got = jax.jit(lambda v: dense.layer_norm(v, scale, bias, 1e-6))(x)
  x64 = x.astype(np.float64)
  want = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(got, want * scale + bias, rtol=1e-4, atol=1e-4)


def test_signed_argmax_forms_agree_with_ties():
  rng = np.random.default_rng(2)
  part = rng.integers(-3, 4, size=(64, 3, 32)).astype(np.float32)  # many ties
  want = np.argmax(np.concatenate([part, -part], -1), -1)
  for workaround in FORMS:
    with xla_cpu.forced(signed_argmax=workaround):
      got = jax.jit(lambda p: lsh_attention._signed_argmax(p))(part)  # pylint: disable=protected-access
    np.testing.assert_array_equal(got, want)


def test_lowering_follows_the_compile_target_not_the_default_backend():
  """On this CPU machine, a program lowered for a TPU holds the plain LayerNorm moments and
  signed argmax; one lowered for the CPU the workarounds."""
  scale = jnp.ones(64)

  def f(v):
    return dense.layer_norm(v, scale, scale, 1e-6), lsh_attention._signed_argmax(v)  # pylint: disable=protected-access

  traced = jax.jit(f).trace(jnp.ones((4, 64)))
  for_cpu = traced.lower(lowering_platforms=("cpu",)).as_text()
  for_tpu = traced.lower(lowering_platforms=("tpu",)).as_text()
  assert "dot_general" in for_cpu and "dot_general" not in for_tpu
  assert "concatenate" in for_tpu and "concatenate" not in for_cpu
  assert "stablehlo.reduce" in for_tpu


def test_kept_workarounds_stay_on_every_platform():
  traced = jax.jit(softmax.row_sum).trace(jnp.ones((4, 64)))
  assert "dot_general" in traced.lower(lowering_platforms=("tpu",)).as_text()
  with xla_cpu.forced(row_reductions=False):
    plain = jax.jit(lambda v: softmax.row_sum(v)).trace(jnp.ones((4, 64)))
  assert "dot_general" not in plain.lower(lowering_platforms=("cpu",)).as_text()


def test_forced_names_must_be_known():
  with pytest.raises(ValueError, match="unknown XLA:CPU workarounds"):
    with xla_cpu.forced(tree_sums=False):
      pass


@functools.lru_cache(maxsize=None)
def _lm_loss_and_grads(stream_dtype, off=()):
  """Loss and gradients of a reversible LM with local and LSH layers and `stream_dtype`
  streams, the workarounds `off` forced off."""
  config = ReformerConfig(vocab_size=16, d_model=16, d_ff=32, n_heads=2, d_head=8,
                          n_layers=2, attention_types=("local", "lsh"), max_len=32,
                          n_buckets=4, lsh_chunk_len=8, local_chunk_len=8, ff_chunk_size=8,
                          loss_chunk_len=8, stream_dtype=stream_dtype, deterministic=True)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 32), 0, 16)
  params = jax.jit(ReformerLM(config).init)(
      {"params": jax.random.PRNGKey(1), "hash": jax.random.PRNGKey(2)}, tokens)["params"]
  rotations = draw_rotations(jax.random.PRNGKey(3), config.n_heads, config.d_head,
                             config.n_hashes, config.n_buckets)

  def loss(p):
    out = ReformerLM(config).apply({"params": p}, tokens, targets=tokens,
                                   lsh_rotations=rotations)
    return out["loss"] / out["weight"]

  with xla_cpu.forced(**{name: False for name in off}):
    return jax.jit(jax.value_and_grad(loss))(params)


# Every workaround but one keeps the values: `float32_accumulation` changes the rounding of
# 16-bit streams' gradients (below).
SAME_VALUES = tuple(n for n in xla_cpu.WORKAROUNDS + xla_cpu.KEPT
                    if n != "float32_accumulation")


def test_every_workaround_off_gives_the_same_loss_and_gradients():
  """bfloat16 streams (bits moves), every value-keeping workaround forced off against the
  CPU defaults: the same loss and gradients."""
  loss_on, grads_on = _lm_loss_and_grads("bfloat16")
  loss_off, grads_off = _lm_loss_and_grads("bfloat16", SAME_VALUES)
  np.testing.assert_allclose(loss_off, loss_on, rtol=1e-5)
  for off, on in zip(jax.tree.leaves(grads_off), jax.tree.leaves(grads_on)):
    np.testing.assert_allclose(off, on, rtol=1e-3, atol=1e-5)


def test_in_place_accumulation_is_as_close_to_float32_streams():
  """bfloat16 streams' attention gradients accumulated in place (the fused rebuild, as for
  accelerators) are as close to the float32 streams' gradients as the CPU's float32
  accumulation, and the loss is the same (the forward pass does not change)."""
  loss_on, grads_on = _lm_loss_and_grads("bfloat16")
  loss_off, grads_off = _lm_loss_and_grads("bfloat16", ("float32_accumulation",))
  _, want = _lm_loss_and_grads("float32")
  np.testing.assert_allclose(loss_off, loss_on, rtol=1e-5)
  errors = lambda grads: [float(np.max(np.abs(g - w)) / np.max(np.abs(w)))
                          for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want))]
  in_place, wide = errors(grads_off), errors(grads_on)
  assert max(in_place) < 0.15 and np.mean(in_place) < 1.1 * np.mean(wide), (in_place, wide)
  assert any(not np.array_equal(a, b)
             for a, b in zip(jax.tree.leaves(grads_off), jax.tree.leaves(grads_on)))


def test_bits_moves_follow_the_platform_being_traced_for():
  x = jnp.ones((4,), jnp.bfloat16)
  assert chunking.to_bits(x).dtype == jnp.uint16  # this CPU
  with xla_cpu.compiling_for("tpu"):
    assert chunking.to_bits(x).dtype == jnp.bfloat16
    with xla_cpu.forced(bits_moves=True):
      assert chunking.to_bits(x).dtype == jnp.uint16
  assert xla_cpu.traced_platform() == "cpu"
