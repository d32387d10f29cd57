"""Long Range Arena's ListOps (Nangia & Bowman 2018; Tay et al. 2020), generated locally.

The rules of LRA's `lra_benchmarks/data/listops.py`: a tree is a digit 0-9 with
probability 1 - `op_probability` (always at `max_depth`), else an operator MIN, MAX, MED
(median, rounded down) or SM (sum modulo 10) over 2 .. `max_args` subtrees; trees are
drawn until their token count lies in `[min_length, max_length]`; the label is the value
(10 classes). Written in prefix form `[MAX 2 9 [MIN 4 7 ] 0 ]` (LRA also writes parentheses
around each subtree, which carry no information and are left out here). Deterministic from
`seed`.
"""
from typing import List, Sequence, Tuple

import numpy as np

from reformer_jax.data.classification import SPECIAL_IDS, ClassificationData

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
SYMBOLS = tuple(str(d) for d in range(10)) + OPERATORS + ("]",)
_ID = {s: SPECIAL_IDS + i for i, s in enumerate(SYMBOLS)}


def _apply(op: str, values: Sequence[int]) -> int:
  if op == "[MIN":
    return min(values)
  if op == "[MAX":
    return max(values)
  if op == "[MED":
    return int(np.median(values))
  return sum(values) % 10


def _tree(rng: np.random.Generator, depth: int, max_depth: int, max_args: int,
          op_probability: float) -> Tuple[List[str], int]:
  """(prefix symbols, value) of one random tree."""
  if depth >= max_depth or rng.random() >= op_probability:
    value = int(rng.integers(10))
    return [str(value)], value
  op = OPERATORS[rng.integers(len(OPERATORS))]
  symbols, values = [op], []
  for _ in range(rng.integers(2, max_args + 1)):
    sub, value = _tree(rng, depth + 1, max_depth, max_args, op_probability)
    symbols += sub
    values.append(value)
  return symbols + ["]"], _apply(op, values)


def evaluate(symbols: Sequence[str]) -> int:
  """The value of a prefix ListOps expression (an independent check of the labels)."""
  stack: List[list] = [[]]
  for s in symbols:
    if s in OPERATORS:
      stack.append([s])
    elif s == "]":
      op, *values = stack.pop()
      stack[-1].append(_apply(op, values))
    else:
      stack[-1].append(int(s))
  (value,) = stack[0]
  return value


def generate(n: int, seed: int, *, min_length: int, max_length: int, max_depth: int = 10,
             max_args: int = 10, op_probability: float = 0.25,
             max_tries: int = 10_000_000) -> Tuple[List[List[str]], np.ndarray]:
  """`n` expressions (symbol lists) whose lengths lie in `[min_length, max_length]`, and
  their values `[n]`."""
  if not 1 <= min_length <= max_length or max_args < 2 or max_depth < 1:
    raise ValueError(f"need 1 <= min_length <= max_length, max_args >= 2, max_depth >= 1; "
                     f"got {min_length}, {max_length}, {max_args}, {max_depth}")
  rng = np.random.default_rng(seed)
  expressions, values = [], []
  for _ in range(max_tries):
    if len(expressions) == n:
      break
    symbols, value = _tree(rng, 1, max_depth, max_args, op_probability)
    if min_length <= len(symbols) <= max_length:
      expressions.append(symbols)
      values.append(value)
  else:
    raise ValueError(f"{max_tries} trees gave only {len(expressions)} of {n} expressions "
                     f"with lengths in [{min_length}, {max_length}]; widen the range or "
                     "raise max_depth / max_args / op_probability")
  return expressions, np.asarray(values, np.int32)


def listops(seed: int = 0, n_train: int = 96_000, n_eval: int = 2_000, n_test: int = 2_000,
            min_length: int = 500, max_length: int = 2_000, max_depth: int = 10,
            max_args: int = 10, op_probability: float = 0.25) -> ClassificationData:
  """ListOps as ClassificationData (vocab 17: padding, CLS and 15 symbols; 10 labels).

  LRA's sizes by default (96,000 / 2,000 / 2,000 examples of 500 to 2,000 tokens); each
  split is drawn from its own seed.
  """
  settings = dict(min_length=min_length, max_length=max_length, max_depth=max_depth,
                  max_args=max_args, op_probability=op_probability)
  splits, labels = {}, {}
  for i, (name, n) in enumerate((("train", n_train), ("eval", n_eval), ("test", n_test))):
    expressions, values = generate(n, seed * 3 + i, **settings)
    splits[name] = [np.array([_ID[s] for s in e], np.int32) for e in expressions]
    labels[name] = values
  return ClassificationData(splits, labels, vocab_size=SPECIAL_IDS + len(SYMBOLS),
                            num_labels=10, seed=seed)
