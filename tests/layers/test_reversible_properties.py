"""Property-based test (hypothesis): the reversible stack's gradients are those of the
same layers as plain residual code, over random depths, widths, shapes, dropout and scan."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from reformer_jax.layers.reversible import reversible_layers


def block(params, x, aux, rng, keep):
  """A block with parameters, a nonlinearity, dropout (keep probability `keep`) and a
  non-differentiated input."""
  h = jnp.tanh(x @ params["w1"] + params["b"][None, None, :]) @ params["w2"]
  kept = jax.random.bernoulli(rng, keep, h.shape)
  return jnp.where(kept, h / keep, 0.) * aux[..., None]


def plain_layers(fns, params, rngs, x1, x2, aux):
  """y1 = x1 + F(x2), y2 = x2 + G(y1) as ordinary code under ordinary autodiff."""
  for (f, g), (pf, pg), (rf, rg) in zip(fns, params, rngs):
    x1 = x1 + f(pf, x2, aux, rf)
    x2 = x2 + g(pg, x1, aux, rg)
  return x1, x2


@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(n_layers=st.integers(1, 4), d=st.integers(1, 6), hidden=st.integers(1, 8),
       batch=st.integers(1, 2), length=st.integers(1, 5), keep=st.sampled_from([1.0, 0.7]),
       scan=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_reversible_gradients_equal_plain_residual_gradients(n_layers, d, hidden, batch,
                                                             length, keep, scan, seed):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  dense = lambda: {"w1": normal(d, hidden) / np.sqrt(d), "b": normal(hidden),
                   "w2": normal(hidden, d) / np.sqrt(hidden)}
  params = tuple((dense(), dense()) for _ in range(n_layers))
  rngs = tuple((jax.random.PRNGKey(2 * i), jax.random.PRNGKey(2 * i + 1))
               for i in range(n_layers))
  f = functools.partial(block, keep=keep)   # one object: the layers repeat (scan)
  fns = ((f, f),) * n_layers
  x1, x2, c1, c2 = (normal(batch, length, d) for _ in range(4))
  aux = jnp.asarray(rng.random((batch, length)), jnp.float32)

  def grads(core):
    def loss(params, x1, x2):
      y1, y2 = core(fns, params, rngs, x1, x2, aux)
      return jnp.sum(y1 * c1) + jnp.sum(y2 * c2)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(params, x1, x2)

  got = grads(lambda *args: reversible_layers(*args, scan=scan))
  want = grads(plain_layers)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * float(np.max(np.abs(w))) + 1e-6)
