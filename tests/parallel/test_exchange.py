"""`fetch` and `halo` on 8 fake CPU devices against plain indexing."""
from tests.parallel.eight_devices import run_on_eight_devices

_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
from reformer_jax.parallel.exchange import fetch, halo
jax.config.update("jax_default_matmul_precision", "highest")
mesh = Mesh(np.array(jax.devices()), ("s",))
n, m = 6, 10
rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(8 * n, 3)), jnp.float32)
w = jnp.asarray(rng.normal(size=(8 * m, 3)), jnp.float32)
requests = rng.integers(0, 8 * n, (8 * m,)).astype(np.int32)
requests[:m] = 5  # device 0 asks device 0 for one row ten times: 5 passes of 2
for capacity in (2, None):
  f = jax.jit(jax.shard_map(lambda x, r: fetch(x, r, "s", capacity), mesh=mesh,
                            in_specs=(P("s"), P("s")), out_specs=P("s")))
  np.testing.assert_array_equal(f(x, requests), x[requests])
  np.testing.assert_array_equal(f(x.astype(jnp.bfloat16), requests),
                                x.astype(jnp.bfloat16)[requests])
  grad = jax.grad(lambda x: jnp.sum(f(x, requests) * w))(x)
  np.testing.assert_allclose(grad, jax.grad(lambda x: jnp.sum(x[requests] * w))(x),
                             rtol=1e-6, atol=1e-6)
for wrap in (False, True):
  g = jax.shard_map(lambda x: jnp.concatenate(halo(x, 2, 1, "s", wrap=wrap), 0), mesh=mesh,
                    in_specs=P("s"), out_specs=P("s"))
  got = np.asarray(g(x)).reshape(8, 3, 3)
  blocks = np.asarray(x).reshape(8, n, 3)
  for d in range(8):
    before = blocks[d - 1, -2:] if d or wrap else np.zeros((2, 3))
    after = blocks[(d + 1) % 8, :1] if d < 7 or wrap else np.zeros((1, 3))
    np.testing.assert_array_equal(got[d], np.concatenate([before, after]))
try:
  jax.shard_map(lambda x: halo(x, 7, 0, "s")[0], mesh=mesh, in_specs=P("s"), out_specs=P("s"))(x)
except ValueError as e:
  print("error:", e)
print("done")
"""


def test_fetch_and_halo_equal_indexing_and_their_gradients():
  out = run_on_eight_devices(_SCRIPT)
  assert "error: a halo of 7 entries needs at least that many per device, got 6" in out
  assert out.strip().endswith("done")
