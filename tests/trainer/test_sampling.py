"""Sampling against a plain loop that re-runs the model on the exact context."""
import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax.models import ReformerConfig, ReformerLM
from reformer_jax.trainer.sampling import generate


class Latin1:
  """A lossless byte codec, so the test compares exact token ids."""
  vocab_size = 256

  def encode(self, text):
    return np.frombuffer(text.encode("latin-1"), np.uint8).astype(np.int32)

  def decode(self, tokens):
    return np.asarray(tokens, np.uint8).tobytes().decode("latin-1")


def test_greedy_generation_matches_a_plain_loop_with_a_sliding_window():
  config = ReformerConfig(vocab_size=256, d_model=32, d_ff=32, n_heads=2, d_head=16,
                          n_layers=1, attention_types=("local",), local_chunk_len=4,
                          positional="learned", max_len=6, dropout_rate=0.,
                          attention_dropout=0., deterministic=True)
  model = ReformerLM(config)
  tokens = jnp.zeros((1, 6), jnp.int32)
  params = model.init({"params": jax.random.PRNGKey(3)}, tokens)["params"]
  codec = Latin1()
  apply = jax.jit(model.apply)
  prompt, length = "abc", 7   # 10 tokens: the last ones see only 6 (max_len)

  expected = list(codec.encode(prompt))
  for _ in range(length):
    context = jnp.asarray([expected[-config.max_len:]], jnp.int32)
    logits = apply({"params": params}, context)
    expected.append(int(jnp.argmax(logits[0, -1])))

  text = generate(config, params, codec, prompt, length=length, temperature=0.)
  np.testing.assert_array_equal(codec.encode(prompt + text), expected)
