"""Sampling text from a Reformer LM without a cache.

Each new token re-runs the model over a fixed-length window: the sequence so
far (the rest masked) or, once it outgrows the position table, its last
`max_length` tokens. The window length is fixed, so generation compiles once.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax.models import ReformerConfig, ReformerLM
from reformer_jax.trainer.experiment import max_length


def check_can_sample(data):
  """Raises ValueError unless `data` can encode text prompts and decode tokens."""
  if not (hasattr(data, "encode") and hasattr(data, "decode")):
    raise ValueError(f"{type(data).__name__} is not a text source: it cannot encode a "
                     "text prompt, so there is nothing to sample from; sample from models "
                     "trained on text (shipped_corpus, local_file, tfds_text), or set "
                     "Experiment.sample_length = 0.")


def generate(config: ReformerConfig, params, data, prompt: str, *,
             length: int, temperature: float = 0.8, top_k: int = 40,
             seed: int = 0) -> str:
  """The text of `length` tokens sampled after `prompt`.

  Args:
    config: the model's config (made deterministic here).
    params: its parameters.
    data: the data source (its encode / decode / vocab_size).
    prompt: non-empty text to continue.
    length: tokens to generate.
    temperature: softmax temperature; 0 picks the likeliest token.
    top_k: sample among the k likeliest tokens (0: all).
    seed: seed of sampling and LSH hashing.
  """
  check_can_sample(data)
  tokens = np.asarray(data.encode(prompt), np.int32)
  if not tokens.size:
    raise ValueError("the prompt is empty; give at least one character, e.g. "
                     "--prompt='\\n'.")
  if length < 1 or temperature < 0 or top_k < 0:
    raise ValueError(f"need length >= 1, temperature >= 0, top_k >= 0; got "
                     f"{length}, {temperature}, {top_k}.")
  total = tokens.size + length
  window = min(total, max_length(config) or total)
  sequence = np.zeros((1, total), np.int32)
  sequence[0, :tokens.size] = tokens
  out = _sample(params, jnp.asarray(sequence), tokens.size,
                jax.random.PRNGKey(seed),
                model=ReformerLM(config.replace(deterministic=True)),
                window=window, temperature=float(temperature),
                top_k=min(top_k, data.vocab_size), vocab=data.vocab_size)
  return data.decode(np.asarray(out)[0, tokens.size:])


@functools.partial(jax.jit, static_argnames=("model", "window", "temperature",
                                              "top_k", "vocab"))
def _sample(params, sequence, start, key, *, model, window, temperature, top_k,
            vocab):
  """Fills sequence[0, start:] token by token from windows of `window` tokens."""
  positions = jnp.arange(window)[None, :]

  def body(i, carry):
    sequence, key = carry
    key, hash_key, sample_key = jax.random.split(key, 3)
    first = jnp.maximum(i - window, 0)
    context = jax.lax.dynamic_slice(sequence, (0, first), (1, window))
    logits = model.apply({"params": params}, context, positions < i - first,
                         rngs={"hash": hash_key})
    logits = logits[0, i - first - 1, :vocab].astype(jnp.float32)
    if temperature == 0:
      token = jnp.argmax(logits)
    else:
      if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][-1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
      token = jax.random.categorical(sample_key, logits / temperature)
    return sequence.at[0, i].set(token.astype(sequence.dtype)), key

  return jax.lax.fori_loop(start, sequence.shape[1], body, (sequence, key))[0]
