"""Token generation from `ReformerLM` in one compiled `lax.while_loop` over new positions.

With the cache (`decoding.py`) the prompts are run once (prefill) and each new token costs
one position of the model. Without it every new token re-runs the model over a window of
fixed length: the whole generation buffer, later positions masked, or, once a sequence
outgrows the position table, its last `position_limit` tokens (a sliding window: positions
restart at 0, so the logits are no longer those of one forward pass). Both use the same
LSH rotations (drawn once from the seed) and the same `n_buckets` (`decoding_config`), so
for a strictly causal model they compute the same logits up to float rounding.

Sampling per step: logits / temperature (0: greedy argmax), the `top_k` likeliest tokens,
then the smallest set whose probability reaches `top_p` (nucleus), then a draw. A sequence
stops after its `eos_id` token or `max_new_tokens`; the loop ends when all have stopped.
"""
import dataclasses
import functools
import time
from typing import List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax.models import decoding
from reformer_jax.models.config import ReformerConfig
from reformer_jax.models.reformer_lm import ReformerLM


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How each token is drawn from the logits.

  Attributes:
    temperature: softmax temperature; 0 takes the likeliest token (greedy).
    top_k: draw among the k likeliest tokens (0: all).
    top_p: draw from the smallest set of likeliest tokens whose probability is >= top_p,
      in (0, 1] (1: all).
  """
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not self.temperature >= 0:
      raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
    if isinstance(self.top_k, bool) or int(self.top_k) != self.top_k or self.top_k < 0:
      raise ValueError(f"top_k must be an int >= 0 (0 = all tokens), got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1] (1 = all tokens), got {self.top_p}")


def sample_tokens(logits: jnp.ndarray, key: jax.Array, sampling: Sampling) -> jnp.ndarray:
  """int32 `[batch]` tokens drawn from float `[batch, vocab]` logits."""
  logits = logits.astype(jnp.float32)
  if sampling.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / sampling.temperature
  if 0 < sampling.top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if sampling.top_p < 1:
    ranked = jnp.sort(logits, axis=-1)[:, ::-1]
    before = jnp.cumsum(jax.nn.softmax(ranked, axis=-1), axis=-1) - jax.nn.softmax(ranked,
                                                                                   axis=-1)
    # The likeliest tokens up to the first whose cumulative probability reaches top_p.
    cutoff = jnp.min(jnp.where(before < sampling.top_p, ranked, jnp.inf), axis=-1,
                     keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@dataclasses.dataclass
class Generation:
  """What `generate_tokens` made.

  Attributes:
    tokens: per prompt, the new tokens (up to and including `eos_id`, if drawn).
    used_cache: whether the cached path ran.
    cache_bytes: memory of the decoding caches (0 without).
    compile_seconds: compiling the generation program.
    seconds: running it (prefill and all steps), compilation excluded.
  """
  tokens: List[np.ndarray]
  used_cache: bool
  cache_bytes: int
  compile_seconds: float
  seconds: float

  @property
  def new_tokens(self) -> int:
    return sum(len(t) for t in self.tokens)

  @property
  def tokens_per_second(self) -> float:
    return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")


def _check_prompts(config: ReformerConfig, prompts, max_new_tokens: int):
  if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens \
      or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens}")
  if not len(prompts):
    raise ValueError("no prompts given; pass at least one sequence of token ids")
  arrays = [np.asarray(p).reshape(-1) for p in prompts]
  for i, p in enumerate(arrays):
    if not p.size:
      raise ValueError(f"prompt {i} is empty; give at least one token (e.g. a newline)")
    if not np.issubdtype(p.dtype, np.integer) or p.min() < 0 or p.max() >= config.vocab_size:
      raise ValueError(f"prompt {i} must hold integer ids in [0, {config.vocab_size}) "
                       f"(vocab_size), got {p.dtype} values in [{p.min()}, {p.max()}]")
  limit = decoding.position_limit(config)
  longest = max(p.size for p in arrays)
  if limit is not None and longest > limit:
    raise ValueError(f"a prompt of {longest} tokens is longer than the model's position "
                     f"table ({limit}); keep its last {limit - 1} tokens or fewer")
  return arrays


def generate_tokens(config: ReformerConfig, params, prompts: Sequence[Sequence[int]],
                    max_new_tokens: int, *, sampling: Sampling = Sampling(), seed: int = 0,
                    eos_id: Optional[int] = None, use_cache: bool = True,
                    lsh_rotations=None, vocab_size: Optional[int] = None) -> Generation:
  """Continues each prompt (a batch) with up to `max_new_tokens` tokens.

  Args:
    config: the model's config.
    params: its parameters.
    prompts: token-id sequences, one per batch entry, of any (non-zero) lengths.
    max_new_tokens: tokens to add to each prompt (fewer after an `eos_id`).
    sampling: temperature, top-k, top-p.
    seed: seed of the draws and of the LSH rotations.
    eos_id: a token that ends a sequence (kept in its output), or None.
    use_cache: cached decoding (`decoding.py`; raises for models it cannot reproduce, see
      `decoding.check_cacheable`, and beyond the position table); False re-runs the model
      for every token (with a sliding window beyond the position table).
    lsh_rotations: LSH rotations (one array, or one per LSH layer) instead of drawing them
      from `seed`, e.g. `convert.hf_rotations` for a converted model.
    vocab_size: draw only ids below it (e.g. the data's vocabulary); default all.

  Returns:
    A `Generation`.
  """
  arrays = _check_prompts(config, prompts, max_new_tokens)
  vocab = config.vocab_size if vocab_size is None else min(vocab_size, config.vocab_size)
  if eos_id is not None and not 0 <= eos_id < config.vocab_size:
    raise ValueError(f"eos_id must be a token id in [0, {config.vocab_size}), got {eos_id}")
  lengths = np.array([p.size for p in arrays], np.int32)
  total = int(lengths.max()) + int(max_new_tokens)
  config, window = loop_setup(config, total, use_cache)
  if lsh_rotations is None:
    lsh_rotations = decoding.draw_lsh_rotations(config, seed)
  tokens = np.zeros((len(arrays), total), np.int32)
  for i, p in enumerate(arrays):
    tokens[i, :p.size] = p
  args = (params, jnp.asarray(tokens), jnp.asarray(lengths),
          jax.random.fold_in(jax.random.PRNGKey(seed), 1), lsh_rotations)
  start = time.perf_counter()
  compiled = generation_loop.lower(*args, config=config, prompt_len=int(lengths.max()),
                                   window=window, max_new=int(max_new_tokens),
                                   sampling=sampling, eos_id=eos_id, vocab=vocab,
                                   use_cache=use_cache).compile()
  compile_seconds = time.perf_counter() - start
  start = time.perf_counter()
  out, n_new = jax.block_until_ready(compiled(*args))
  seconds = time.perf_counter() - start
  out, n_new = np.asarray(out), np.asarray(n_new)
  cache_bytes = 0
  if use_cache:
    cache_bytes = decoding.cache_bytes(decoding.cache_shapes(config, len(arrays), total))
  return Generation([out[i, n:n + k] for i, (n, k) in enumerate(zip(lengths, n_new))],
                    use_cache, cache_bytes, compile_seconds, seconds)


def loop_setup(config: ReformerConfig, total_len: int, use_cache: bool):
  """`(config as the loop runs it, window)` for sequences of up to `total_len` positions:
  checks that the cache can run `config` that far (`use_cache`), or the uncached path's
  window (the position table's length at most), and `decoding.decoding_config`."""
  if use_cache:
    decoding.check_cacheable(config)
    decoding.check_total_len(config, total_len)
    window = total_len
  else:
    window = min(total_len, decoding.position_limit(config) or total_len)
  return decoding.decoding_config(config, window), window


@functools.partial(jax.jit, static_argnames=("config", "prompt_len", "window", "max_new",
                                              "sampling", "eos_id", "vocab", "use_cache"))
def generation_loop(params, tokens, lengths, key, rotations, *, config, prompt_len, window,
                    max_new, sampling, eos_id, vocab, use_cache):
  """The whole generation as one program (`generate_tokens`; `trainer/plan.py` compiles it
  for TPU chips): `tokens` int [b, total] with the prompts right-padded to `prompt_len`,
  `lengths` int [b], `key` the draws' key, `rotations` as `decoding.draw_lsh_rotations`,
  `config` and `window` from `loop_setup`. Returns `(tokens [b, total] with the new ones
  written, new tokens per sequence [b])`."""
  batch, total = tokens.shape
  rows = jnp.arange(batch)
  model = ReformerLM(config)

  def uncached_logits(tokens, positions):  # logits [b, vocab] after each `positions` [b]
    first = jnp.maximum(positions + 1 - window, 0)
    context = jnp.take_along_axis(tokens, first[:, None] + jnp.arange(window)[None], axis=1)
    mask = jnp.arange(window)[None] <= (positions - first)[:, None]
    logits = model.apply({"params": params}, context, mask, lsh_rotations=rotations)
    return logits[rows, positions - first]

  if use_cache:
    logits, cache = decoding.prefill(config, params, tokens[:, :prompt_len], lengths, total,
                                     rotations)
  else:
    logits, cache = uncached_logits(tokens, lengths - 1), None

  def next_logits(tokens, new, positions, cache):
    if use_cache:
      return decoding.decode_step(config, params, new, positions, cache, rotations)
    return uncached_logits(tokens, positions), cache

  def write(i, new, tokens, n_new, done):  # the i-th new tokens (kept where not done)
    tokens = tokens.at[rows, lengths + i].set(new)
    n_new = jnp.where(done, n_new, i + 1)
    if eos_id is not None:
      done = done | (new == eos_id)
    return tokens, n_new, done

  # No step after the last draw, and no lax.cond around the step (which would copy the
  # caches every iteration).
  def body(state):
    i, tokens, n_new, done, new, cache, key = state
    logits, cache = next_logits(tokens, new, lengths + i, cache)
    key, draw = jax.random.split(key)
    new = sample_tokens(logits[:, :vocab], draw, sampling)
    tokens, n_new, done = write(i + 1, new, tokens, n_new, done)
    return i + 1, tokens, n_new, done, new, cache, key

  def cond(state):
    i, done = state[0], state[3]
    return (i + 1 < max_new) & ~jnp.all(done)

  key, draw = jax.random.split(key)
  new = sample_tokens(logits[:, :vocab], draw, sampling)
  zeros = jnp.zeros((batch,), jnp.int32)
  tokens, n_new, done = write(0, new, tokens, zeros, zeros.astype(bool))
  state = (jnp.int32(0), tokens, n_new, done, new, cache, key)
  state = jax.lax.while_loop(cond, body, state)
  return state[1], state[2]
