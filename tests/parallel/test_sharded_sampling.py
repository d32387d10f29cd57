"""Generation (`temperature_sampler.generate_tokens`: prefill and cached decode steps) with the
parameters placed on 8 fake CPU devices by the rule table, fsdp=4 x tensor=2, against one
device."""
from tests.parallel.eight_devices import run_on_eight_devices

_SCRIPT = """
import jax, numpy as np
from reformer_jax.models import ReformerConfig
from reformer_jax.models.temperature_sampler import Sampling, generate_tokens
from reformer_jax.trainer import sharding, steps
config = ReformerConfig(vocab_size=16, d_model=16, d_ff=32, n_heads=2, d_head=4, n_layers=2,
                        attention_types=("local", "lsh"), max_len=32, lsh_chunk_len=4,
                        local_chunk_len=4, n_buckets=4, n_hashes=2, dropout_rate=0.,
                        attention_dropout=0.)
params = jax.device_get(steps.init_params(config, jax.random.PRNGKey(0), 16))
mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=4, tensor=2))
placed = sharding.put(params, steps.param_shardings(config, mesh))
print("split", sum(len(x.addressable_shards[0].data.shape) and
                   x.addressable_shards[0].data.size < x.size for x in jax.tree.leaves(placed)))
prompts = [[3, 1, 4], [1, 5, 9, 2, 6, 5, 3]]
sampling = Sampling(temperature=1., top_k=0)  # drawn tokens: most logits matter
one = generate_tokens(config, params, prompts, 10, sampling=sampling, seed=3).tokens
got = generate_tokens(config, placed, prompts, 10, sampling=sampling, seed=3).tokens
for a, b in zip(one, got):
  np.testing.assert_array_equal(a, b)
print("equal", [list(map(int, t)) for t in got])
"""


def test_sampling_with_sharded_parameters_gives_one_devices_tokens():
  out = run_on_eight_devices(_SCRIPT)
  split = int(out.split("split ")[1].split()[0])
  assert split >= 10, out  # most parameters are split over the mesh
  assert "equal" in out, out
