"""Multi-query associative recall (MQAR), Zoology's rules (Arora et al. 2023, arXiv 2312.04927).

An example of length L holds `num_kv_pairs` key-value pairs first, `k1 v1 k2 v2 ...`: distinct
keys from the first half of the vocabulary (ids 1 .. V/2 - 1), distinct values from the second
(V/2 .. V - 1). After them each key is asked once: key i sits at position `2n + 2 g_i`
(n pairs), where the gaps g_i in [0, (L - 2n) // 2) are drawn without replacement with
p(g) proportional to `power_a * (g + 1) ** (power_a - 1)`. The default power_a = 0.01 puts most
queries soon after the pairs; power_a = 1 places them uniformly over the rest of the sequence,
so that recall spans the whole length. The model reads the sequence and predicts, at a query
position, the key's value; only those positions are scored:

  inputs  [batch, L]  k1 v1 ... kn vn  x .. x ki x .. x kj x ..   (x: a random token in
                      0 .. V - 1 with random_non_queries, else 0)
  targets [batch, L]  the value of ki at ki's query position, 0 elsewhere
  weights [batch, L]  1 at the n query positions, 0 elsewhere

Batches are pure functions of (seed, split, index): train, eval and test use disjoint streams.
Draws per example, in order (`Generator` of `(seed, stream, index)`): keys, values, gaps
(`choice` without replacement), then L fill tokens.
"""
import functools
from typing import Iterator, Optional

import numpy as np

from reformer_jax.data.batch import Batch, batch_rng

_STREAMS = {"train": 0, "eval": 1, "test": 2}


@functools.lru_cache(maxsize=16)
def gap_probabilities(space: int, power_a: float) -> np.ndarray:
  """p(g) for g in [0, space): proportional to power_a * (g + 1) ** (power_a - 1)."""
  p = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
  return p / p.sum()


class MQARData:
  """MQAR batches (Zoology's `multiquery_ar`) of any length >= 4 * num_kv_pairs.

  Attributes:
    num_kv_pairs: key-value pairs per example (each key queried once).
    vocab_size: token ids 0 .. vocab_size - 1; keys 1 .. V/2 - 1, values V/2 .. V - 1.
    power_a: the gap law's exponent; 1.0 places the queries uniformly after the pairs.
    random_non_queries: fill the other positions with random tokens (Zoology's default)
      instead of 0.
    seed: seed of all batches.
  """

  def __init__(self, num_kv_pairs: int = 64, vocab_size: int = 8192, power_a: float = 0.01,
               random_non_queries: bool = True, seed: int = 0):
    if num_kv_pairs < 1:
      raise ValueError(f"mqar.num_kv_pairs must be >= 1, got {num_kv_pairs}.")
    if vocab_size // 2 - 1 < num_kv_pairs:
      raise ValueError(f"mqar.vocab_size={vocab_size} has {max(vocab_size // 2 - 1, 0)} key "
                       f"ids (1 .. vocab_size/2 - 1) for {num_kv_pairs} distinct keys; set "
                       f"mqar.vocab_size >= {2 * num_kv_pairs + 2}.")
    if not 0 < power_a <= 1:
      raise ValueError(f"mqar.power_a must lie in (0, 1] (1.0: uniform), got {power_a}.")
    if seed < 0:
      raise ValueError(f"mqar.seed must be >= 0, got {seed}.")
    self.num_kv_pairs = num_kv_pairs
    self.vocab_size = vocab_size
    self.power_a = float(power_a)
    self.random_non_queries = bool(random_non_queries)
    self.seed = seed

  def min_seq_len(self) -> int:
    """The shortest length: the pairs and as many query slots (4 * num_kv_pairs)."""
    return 4 * self.num_kv_pairs

  def example(self, rng: np.random.Generator, seq_len: int):
    """One example: (inputs, targets, weights), each [seq_len]."""
    n, half = self.num_kv_pairs, self.vocab_size // 2
    keys = rng.choice(np.arange(1, half), n, replace=False)
    values = rng.choice(np.arange(half, self.vocab_size), n, replace=False)
    space = (seq_len - 2 * n) // 2
    gaps = rng.choice(space, n, replace=False, p=gap_probabilities(space, self.power_a))
    fill = rng.integers(self.vocab_size, size=seq_len)
    inputs = fill if self.random_non_queries else np.zeros(seq_len, np.int64)
    inputs[0:2 * n:2], inputs[1:2 * n:2] = keys, values
    queries = 2 * n + 2 * gaps
    inputs[queries] = keys
    targets = np.zeros(seq_len, np.int64)
    targets[queries] = values
    weights = np.zeros(seq_len, np.float32)
    weights[queries] = 1.
    return inputs, targets, weights

  def _batch(self, stream: int, index: int, batch_size: int, seq_len: int) -> Batch:
    if seq_len < self.min_seq_len():
      raise ValueError(f"MQAR with {self.num_kv_pairs} pairs needs seq_len >= "
                       f"{self.min_seq_len()} (4 * num_kv_pairs: the pairs and a query slot "
                       f"per key), got {seq_len}; raise SEQ_LEN or lower mqar.num_kv_pairs.")
    rng = batch_rng(self.seed, stream, index, batch_size)
    inputs, targets, weights = zip(*(self.example(rng, seq_len) for _ in range(batch_size)))
    return {"inputs": np.stack(inputs).astype(np.int32),
            "targets": np.stack(targets).astype(np.int32), "weights": np.stack(weights)}

  def train_batch(self, step: int, batch_size: int, seq_len: int) -> Batch:
    """Training batch `step`: [batch_size, seq_len] arrays."""
    return self._batch(_STREAMS["train"], step, batch_size, seq_len)

  def eval_batches(self, batch_size: int, seq_len: int, n_batches: Optional[int] = None,
                   split: str = "eval") -> Iterator[Batch]:
    """`n_batches` fixed eval (or test) batches."""
    if split not in ("eval", "test"):
      raise ValueError(f"split must be 'eval' or 'test', got {split!r}.")
    if n_batches is None or n_batches < 1:
      raise ValueError(f"MQAR is unbounded: give Experiment.eval_batches >= 1, got "
                       f"{n_batches}.")
    return iter([self._batch(_STREAMS[split], i, batch_size, seq_len)
                 for i in range(n_batches)])


def mqar(num_kv_pairs: int = 64, vocab_size: int = 8192, power_a: float = 0.01,
         random_non_queries: bool = True, seed: int = 0) -> MQARData:
  """Zoology's multi-query associative recall (see `MQARData`)."""
  return MQARData(num_kv_pairs=num_kv_pairs, vocab_size=vocab_size, power_a=power_a,
                  random_non_queries=random_non_queries, seed=seed)
