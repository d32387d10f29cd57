"""Memory of a full ReformerLM training step, from XLA's compiled memory analysis.

The step is value_and_grad of the chunked loss plus an Adam update, jitted with the
parameters and optimizer state donated. Temp memory (activations, gradients, scratch)
must grow at most linearly with the sequence length and stay nearly flat with depth.
"""
import jax
import jax.numpy as jnp
import optax
import pytest

from reformer_jax.models import ReformerConfig, ReformerLM


def train_step_temp_bytes(length: int, n_layers: int, scan_layers: bool = False) -> int:
  config = ReformerConfig(vocab_size=64, d_model=32, d_ff=64, n_heads=2, d_head=16,
                          n_layers=n_layers, attention_types=("local", "lsh"), max_len=length,
                          lsh_chunk_len=32, local_chunk_len=32, loss_chunk_len=32,
                          dropout_rate=0.1, attention_dropout=0.1, scan_layers=scan_layers)
  model = ReformerLM(config)
  tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
  init_rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1),
               "hash": jax.random.PRNGKey(2)}
  params = jax.eval_shape(lambda t: model.init(init_rngs, t)["params"], tokens)
  optimizer = optax.adam(1e-3)
  opt_state = jax.eval_shape(optimizer.init, params)

  def step(params, opt_state, tokens, key):
    def loss_fn(params):
      rngs = {"dropout": jax.random.fold_in(key, 0), "hash": jax.random.fold_in(key, 1)}
      sums = model.apply({"params": params}, tokens, targets=tokens, rngs=rngs)
      return sums["loss"] / sums["weight"]

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, tokens, key).compile()
  return compiled.memory_analysis().temp_size_in_bytes


# Unrolled, 2 -> 4 layers (compiling 8 unrolled layers is slow); scanned, 4 -> 8 (a scan
# over 2 layers is mostly its stacked parameters).
@pytest.mark.parametrize("scan_layers, n_layers", [(False, 2), (True, 4)])
def test_train_step_memory_linear_in_length_and_flat_in_depth(scan_layers, n_layers):
  base = train_step_temp_bytes(1024, n_layers, scan_layers)
  longer = train_step_temp_bytes(2048, n_layers, scan_layers)
  deeper = train_step_temp_bytes(1024, 2 * n_layers, scan_layers)
  # Measured on CPU (jax 0.10.2), unrolled / scanned: 4.41 / 4.80 MB; x2 length: x1.98 /
  # x1.97; x2 depth: x1.05 / x1.05 (what grows is parameter-sized: gradients, optimizer
  # temporaries and, scanned, the stacked parameters and gradients).
  assert longer <= 2.2 * base, (base, longer)
  assert deeper < 1.1 * base, (base, deeper)
