"""Tests for reformer_jax.layers.reversible."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.layers.feed_forward import ChunkedFeedForward
from reformer_jax.layers.lsh_attention import LSHSelfAttention
from reformer_jax.layers.reversible import ReversibleStack, _period, reversible_layers

# 'rbg' keys replay like threefry keys but XLA compiles them much faster.
RBG = functools.partial(jax.random.key, impl="rbg")


def plain_layers(fns, params, rngs, x1, x2, aux):
  """Reference: the same layers as ordinary residual code under ordinary autodiff."""
  for (f, g), (pf, pg), (rf, rg) in zip(fns, params, rngs):
    x1 = x1 + f(pf, x2, aux, rf)
    x2 = x2 + g(pg, x1, aux, rg)
  return x1, x2


def dense_dropout(params, x, aux, rng):
  """A block with parameters, a nonlinearity, dropout and a non-differentiated input."""
  h = jnp.tanh(x @ params["w1"] + params["b"][None, None, :]) @ params["w2"]
  keep = jax.random.bernoulli(rng, 0.8, h.shape)
  return jnp.where(keep, h / 0.8, 0.) * aux[..., None]


def _dense_params(key, d, hidden):
  k1, k2, k3 = jax.random.split(key, 3)
  return {"w1": jax.random.normal(k1, (d, hidden)) / np.sqrt(d),
          "b": jax.random.normal(k2, (hidden,)),
          "w2": jax.random.normal(k3, (hidden, d)) / np.sqrt(hidden)}


def _loss(core, fns, c1, c2):
  def loss(params, x1, x2, rngs, aux):
    y1, y2 = core(fns, params, rngs, x1, x2, aux)
    return jnp.sum(y1 * c1) + jnp.sum(y2 * c2)
  return loss


def _assert_tree_close(got, want, rtol=1e-5):
  """Equal within `rtol` relative to each array's largest magnitude."""
  def check(g, w):
    np.testing.assert_allclose(g, w, rtol=0, atol=rtol * float(np.max(np.abs(w))) + 1e-7)
  jax.tree_util.tree_map(check, got, want)


def _check_against_plain(fns, params, rngs, x1, x2, aux, scan=False):
  k1, k2 = jax.random.split(jax.random.PRNGKey(99))
  c1 = jax.random.normal(k1, x1.shape)
  c2 = jax.random.normal(k2, x1.shape)

  def value_and_grads(core):
    loss = _loss(core, fns, c1, c2)
    return jax.jit(lambda *args: (core(fns, args[0], args[3], args[1], args[2], args[4]),
                                  jax.grad(loss, argnums=(0, 1, 2))(*args)))

  got, grads_got = value_and_grads(functools.partial(reversible_layers, scan=scan))(
      params, x1, x2, rngs, aux)
  want, grads_want = value_and_grads(plain_layers)(params, x1, x2, rngs, aux)
  _assert_tree_close(got, want)
  _assert_tree_close(grads_got, grads_want)
  return grads_got


def dense_dropout_sin(params, x, aux, rng):
  return jnp.sin(dense_dropout(params, x, aux, rng))


@pytest.mark.parametrize("layout, scan, make_key", [("cycles", True, RBG),
                                                   ("cycles", False, jax.random.PRNGKey),
                                                   ("distinct", True, jax.random.PRNGKey)])
def test_dense_dropout_matches_plain_residual(layout, scan, make_key):
  """'cycles': 5 layers alternating two blocks (with `scan`: 2 scanned cycles + 1 unrolled
  layer); 'distinct': 3 layers of distinct functions (nothing to scan)."""
  if layout == "cycles":
    n_layers = 5
    fns = tuple((dense_dropout, dense_dropout_sin) if i % 2 else (dense_dropout_sin, dense_dropout)
                for i in range(n_layers))
  else:
    n_layers = 3
    fns = tuple((functools.partial(dense_dropout), functools.partial(dense_dropout_sin))
                for _ in range(n_layers))
  d = 6
  keys = jax.random.split(jax.random.PRNGKey(0), 4 * n_layers + 3)
  params = tuple((_dense_params(keys[4 * i], d, 10), _dense_params(keys[4 * i + 1], d, 10))
                 for i in range(n_layers))
  rngs = tuple((make_key(10 * i), make_key(10 * i + 1)) for i in range(n_layers))
  x1 = jax.random.normal(keys[-3], (2, 5, d))
  x2 = jax.random.normal(keys[-2], (2, 5, d))
  aux = jax.random.uniform(keys[-1], (2, 5))
  grads = _check_against_plain(fns, params, rngs, x1, x2, aux, scan)
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree_util.tree_leaves(grads))


@dataclasses.dataclass(frozen=True)
class Quantised:
  """F(x) = w x (1 + parity(floor(x 2^22))): a discrete choice made from x (like LSH
  buckets) that the rounding of a rebuilt input changes. With `saves_state` the forward's
  choice is kept for the backward pass."""
  saves_state: bool

  def __call__(self, params, x, aux, rng, save_state=False, state=None):
    del aux, rng
    if state is None:
      state = jnp.floor(jax.lax.stop_gradient(x) * 2. ** 22).astype(jnp.int32) % 2
    out = params[None, None, :] * x * (1 + state)
    return (out, state) if save_state else out


@pytest.mark.parametrize("scan", [False, True])
def test_saved_state_reaches_the_backward_pass(scan):
  """The gradient uses the forward's choices (as plain autodiff does); recomputing them
  from the rebuilt inputs would not."""
  n_layers, d = 4, 8
  keys = jax.random.split(jax.random.PRNGKey(3), 2 * n_layers + 2)
  x1, x2 = (jax.random.normal(k, (2, 16, d)) for k in keys[-2:])
  rngs = tuple((None, jax.random.PRNGKey(i)) for i in range(n_layers))
  aux = jnp.ones((2, 16))
  params = tuple((jax.random.uniform(keys[2 * i], (d,)), _dense_params(keys[2 * i + 1], d, 10))
                 for i in range(n_layers))

  def grads(saves_state, core):
    fns = ((Quantised(saves_state), dense_dropout_sin),) * n_layers
    loss = _loss(core, fns, jnp.ones_like(x1), jnp.ones_like(x2))
    return jax.jit(jax.grad(loss))(params, x1, x2, rngs, aux)

  want = grads(False, plain_layers)
  _assert_tree_close(grads(True, functools.partial(reversible_layers, scan=scan)), want)
  with pytest.raises(AssertionError):  # the rebuilt inputs do flip some choices
    _assert_tree_close(grads(False, functools.partial(reversible_layers, scan=scan)), want)


def test_period_detection():
  a, b = dense_dropout, dense_dropout_sin
  params = ({"w": jnp.zeros(2)}, {"w": jnp.zeros(2)})
  rngs = (None, None)
  assert _period(((a, b),) * 4, (params,) * 4, (rngs,) * 4) == 1
  assert _period(((a, b), (b, a)) * 2 + ((a, b),), (params,) * 5, (rngs,) * 5) == 2
  assert _period(((a, b), (b, a), (a, a)), (params,) * 3, (rngs,) * 3) == 3
  other = ({"w": jnp.zeros(3)}, {"w": jnp.zeros(2)})
  assert _period(((a, b),) * 3, (params, params, other), (rngs,) * 3) == 3


def test_lsh_and_feed_forward_blocks_with_dropout_match_plain_residual():
  """Dropout and LSH rotations are replayed in the backward recomputation."""
  batch, length, d_model = 2, 32, 8
  attention = LSHSelfAttention(n_heads=2, d_head=4, n_hashes=2, n_buckets=4, chunk_len=8,
                               causal=True, attention_dropout=0.2)
  ff = ChunkedFeedForward(d_ff=16, chunk_size=8, dropout_rate=0.2)

  def f(p, x, mask, rng):
    return attention.apply({"params": p}, x, mask, deterministic=False, rngs=rng)

  def g(p, x, mask, rng):
    del mask
    return ff.apply({"params": p}, x, deterministic=False, rngs=rng)

  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  x1 = jax.random.normal(keys[0], (batch, length, d_model))
  x2 = jax.random.normal(keys[1], (batch, length, d_model))
  mask = jnp.arange(length)[None, :] < jnp.array([length, 27])[:, None]
  n_layers = 2
  # Random lecun-normal-like parameters of the right shapes (eval_shape: no eager forward).
  shapes = (jax.eval_shape(lambda: attention.init({"params": keys[2], "hash": keys[3]}, x1, mask,
                                                  deterministic=True)["params"]),
            jax.eval_shape(lambda: ff.init({"params": keys[2]}, x1, deterministic=True)["params"]))
  leaves, treedef = jax.tree_util.tree_flatten(shapes)
  params = tuple(
      jax.tree_util.tree_unflatten(treedef, [
          jax.random.normal(jax.random.fold_in(keys[2], 100 * i + j), leaf.shape)
          / (np.sqrt(leaf.shape[0]) if len(leaf.shape) == 2 else 10.)
          for j, leaf in enumerate(leaves)])
      for i in range(n_layers))
  rngs = tuple(({"hash": RBG(20 + i), "dropout": RBG(30 + i)}, {"dropout": RBG(40 + i)})
               for i in range(n_layers))
  fns = ((f, g),) * n_layers
  _check_against_plain(fns, params, rngs, x1, x2, mask)


class _PositionwiseFF:
  """G as a position-wise function: declares `position_chunk`, accepts `chunk_index`."""

  def __init__(self, module):
    self.module = module
    self.position_chunk = module.chunk_size
    self.calls = []

  def __call__(self, p, x, aux, rng, chunk_index=None):
    del aux
    self.calls.append(chunk_index is not None)
    return self.module.apply({"params": p}, x, deterministic=False, rngs=rng,
                             chunk_index=chunk_index)


@pytest.mark.parametrize("length", [32, 30])  # 30: chunk 8 does not divide, unfused path
def test_position_wise_block_is_rebuilt_in_place_and_matches_plain(length):
  """Chunk-by-chunk rebuild + VJP of a position-wise G gives the plain-autodiff grads."""
  d_model = 8
  ff = ChunkedFeedForward(d_ff=16, chunk_size=8, dropout_rate=0.2, activation="gelu")
  g = _PositionwiseFF(ff)
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  x1 = jax.random.normal(keys[0], (2, length, d_model))
  x2 = jax.random.normal(keys[1], (2, length, d_model))
  aux = jnp.ones((2, length))
  n_layers = 3
  params = tuple((_dense_params(jax.random.fold_in(keys[2], i), d_model, 16),
                  ff.init(jax.random.fold_in(keys[2], 10 + i), x1, deterministic=True)["params"])
                 for i in range(n_layers))
  rngs = tuple((RBG(50 + i), {"dropout": RBG(60 + i)}) for i in range(n_layers))
  fns = ((dense_dropout, g),) * n_layers
  _check_against_plain(fns, params, rngs, x1, x2, aux)
  assert any(g.calls) == (length % 8 == 0)


class DenseDropoutBlock(nn.Module):
  rate: float = 0.3

  @nn.compact
  def __call__(self, x, aux, layer_aux, deterministic):
    del layer_aux
    h = nn.Dense(x.shape[-1], name="dense")(jnp.tanh(x)) * aux[..., None]
    return nn.Dropout(self.rate)(h, deterministic=deterministic)


def _stack_setup(n_layers=2):
  blocks = tuple((DenseDropoutBlock(), DenseDropoutBlock()) for _ in range(n_layers))
  stack = ReversibleStack(blocks)
  keys = jax.random.split(jax.random.PRNGKey(2), 3)
  x1 = jax.random.normal(keys[0], (2, 7, 4))
  x2 = jax.random.normal(keys[1], (2, 7, 4))
  aux = jax.random.uniform(keys[2], (2, 7))
  init = jax.jit(functools.partial(stack.init, deterministic=False))
  variables = init({"params": jax.random.PRNGKey(3), "dropout": jax.random.PRNGKey(4)},
                   x1, x2, aux)
  return stack, variables, x1, x2, aux


def test_stack_param_tree():
  stack = ReversibleStack(tuple((DenseDropoutBlock(), DenseDropoutBlock()) for _ in range(2)))
  x = jnp.zeros((2, 7, 4))
  variables = jax.eval_shape(lambda: stack.init(jax.random.PRNGKey(0), x, x, x[..., 0],
                                                deterministic=True))
  shapes = jax.tree_util.tree_map(lambda s: s.shape, variables["params"])
  assert shapes == {f"layer_{i}": {name: {"dense": {"kernel": (4, 4), "bias": (4,)}}
                                   for name in ("attention", "feed_forward")}
                    for i in range(2)}


def test_stack_matches_non_reversible_stack():
  stack, variables, x1, x2, aux = _stack_setup(n_layers=3)
  rngs = {"dropout": jax.random.PRNGKey(5)}

  def loss(module):
    def fn(variables, x1, x2):
      y1, y2 = module.apply(variables, x1, x2, aux, deterministic=False, rngs=rngs)
      return jnp.sum(y1 * jnp.cos(y2))
    return fn

  plain = stack.clone(reversible=False)
  value, grads = jax.jit(jax.value_and_grad(loss(stack), argnums=(0, 1, 2)))(
      variables, x1, x2)
  value_plain, grads_plain = jax.jit(jax.value_and_grad(loss(plain), argnums=(0, 1, 2)))(
      variables, x1, x2)
  np.testing.assert_allclose(value, value_plain, rtol=1e-6)
  _assert_tree_close(grads, grads_plain)
  # Dropout is really on: a different dropout rng changes the output.
  apply = jax.jit(lambda key: stack.apply(variables, x1, x2, aux, deterministic=False,
                                          rngs={"dropout": key}))
  assert not np.allclose(apply(jax.random.PRNGKey(6))[0], apply(rngs["dropout"])[0])


def test_stack_deterministic_needs_no_rng_and_checks_shapes():
  stack, variables, x1, x2, aux = _stack_setup()
  a = stack.apply(variables, x1, x2, aux, deterministic=True)
  b = stack.clone(deterministic=True).apply(variables, x1, x2, aux)
  _assert_tree_close(a, b, rtol=0)
  with pytest.raises(ValueError, match="same shape"):
    stack.apply(variables, x1, x2[:, 1:], aux, deterministic=True)


class BatchNormBlock(nn.Module):

  @nn.compact
  def __call__(self, x, aux, layer_aux, deterministic):
    return nn.BatchNorm(use_running_average=True)(x)


class SowingBlock(nn.Module):

  @nn.compact
  def __call__(self, x, aux, layer_aux, deterministic):
    self.sow("intermediates", "input", x)
    return nn.Dense(x.shape[-1])(x)


@pytest.mark.parametrize("block, collection", [(BatchNormBlock(), "batch_stats"),
                                               (SowingBlock(), "intermediates")])
def test_stack_rejects_blocks_with_other_collections(block, collection):
  stack = ReversibleStack(((DenseDropoutBlock(), block),))
  x = jnp.zeros((2, 7, 4))
  with pytest.raises(ValueError, match=rf"'feed_forward'.*\['{collection}'\].*pure functions"):
    stack.init(jax.random.PRNGKey(0), x, x, x[..., 0], deterministic=True)


def _temp_bytes(core, n_layers, length=8192, d=16):
  fns = ((dense_dropout, dense_dropout),) * n_layers
  key = jax.random.PRNGKey(0)
  params = tuple((_dense_params(key, d, 4 * d), _dense_params(key, d, 4 * d))
                 for _ in range(n_layers))
  rngs = tuple((RBG(2 * i), RBG(2 * i + 1)) for i in range(n_layers))
  x = jnp.zeros((1, length, d))
  aux = jnp.ones((1, length))
  grad_fn = jax.jit(jax.grad(_loss(core, fns, x, x), argnums=(0, 1, 2)))
  return grad_fn.lower(params, x, x, rngs, aux).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("scan", [False, True])
def test_activation_memory_flat_in_depth(scan):
  """Compiled temp memory of a backward pass: 2 vs 8 layers of [8192, 16] activations.

  Parameters are kept tiny: what may grow with depth is parameter-sized (gradients, and the
  per-cycle stacking of the parameters for the scan).
  """
  core = functools.partial(reversible_layers, scan=scan)
  rev = [_temp_bytes(core, n) for n in (2, 8)]
  plain = [_temp_bytes(plain_layers, n) for n in (2, 8)]
  # Measured on CPU: reversible 11.6 MB -> 11.8 MB (x1.02); plain 17.3 MB -> 61 MB.
  assert rev[1] < 1.05 * rev[0], rev
  assert plain[1] > 3 * plain[0], plain
