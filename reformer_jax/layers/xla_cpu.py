"""XLA:CPU workarounds inside the math, and which of them a program compiled for another
platform keeps: the one place that decides.

Some of the layers' arithmetic is written around XLA:CPU's kernels (docs/performance.md).
Compiled for a TPU, each was measured on and off (`experiments/accelerator_plan.py
--workarounds`, docs/tpu_planning.md):

* chosen by the compile target (`select`): LayerNorm moments as matrix-vector products and
  LSH's signed argmax as a halving tree. Both forms are staged with
  `jax.lax.platform_dependent`, so the choice follows the platform the program is lowered
  for (a TPU topology planned from a CPU machine gets the plain form), not
  `jax.default_backend()`;
* chosen by the platform being traced for (`kept`): 16-bit floats moved through loops as
  uint16 bits (`chunking.to_bits`). It changes the loops' dtypes, so both forms cannot be
  staged; the trainer's steps are traced inside `compiling_for(platform)` when planning
  for a TPU from a CPU machine (`trainer/plan.py`), else for `jax.default_backend()`.
  On a TPU the bits cost memory (the bfloat16 step plans 7.7% fewer temporaries
  without them). Likewise the gathers of a reversible block's parameters split over the
  batch axes (fsdp) are left to the partitioner (`partitioner_gathers`); for other
  platforms each block gathers them explicitly where it uses them (`reversible._BlockFn`):
  the TPU compiler otherwise computes a product whose kernel is split on its contracting
  dimension as a loop over the kernel's shards into an accumulator that it allocates early,
  one per layer (enwik8 at 2,048 tokens under fsdp=8 on v5e:2x4: 0.910 -> 0.537 GiB),
  while on XLA:CPU the explicit gathers raise the same step from 0.498 to 0.947 GiB.
  And the attention blocks' gradients of 16-bit streams are accumulated in float32, over
  the block's whole input (`float32_accumulation`: `windowed.can_rebuild` declines the
  fused rebuild); for other platforms the fused rebuild accumulates the rebuilt stream and
  the input gradient in place in the streams' dtype: XLA:CPU upcasts a bfloat16
  scatter-add through float32 copies, where the TPU compiler saves the float32 array as
  long as the whole input (v5e, 2,097,152 tokens: 12.25 -> 6.44 GiB; docs/tpu_planning.md);
* kept on every platform (`kept`): row maxima and sums as halving trees and products with
  ones (plain reductions of the bfloat16 step crash libtpu 0.0.42's compiler), and NaN-flag
  ties that order XLA's schedule (`reversible._tie`, `chunking.zeros_after`; on a TPU
  they save 10% of the temporaries of a 2-layer step).

`forced` overrides any of them while tracing, to compare the forms on one target.
"""
import contextlib
from typing import Callable, Dict, Iterator, List

import jax

# The workarounds that `select` chooses between, by name.
WORKAROUNDS = ("layer_norm_moments", "signed_argmax")
# The workarounds `kept` decides while tracing: on every platform, or (TRACED) for a CPU only.
KEPT = ("row_reductions", "bits_moves", "ties", "partitioner_gathers", "float32_accumulation")
TRACED = ("bits_moves", "partitioner_gathers", "float32_accumulation")

_forced: Dict[str, bool] = {}
_platform: List[str] = []  # the platform being traced for, innermost last


def select(name: str, workaround: Callable, plain: Callable, *args):
  """`workaround(*args)` in programs compiled for a CPU, `plain(*args)` elsewhere (both
  traced; lowering keeps one). Under `forced`, the forced form on every platform."""
  if name not in WORKAROUNDS:
    raise ValueError(f"unknown XLA:CPU workaround {name!r}; known: {WORKAROUNDS}")
  if name in _forced:
    return (workaround if _forced[name] else plain)(*args)
  return jax.lax.platform_dependent(*args, cpu=workaround, default=plain)


def kept(name: str) -> bool:
  """Whether the KEPT workaround `name` is on while tracing: a TRACED one for a CPU only,
  the others always (unless `forced`)."""
  if name in _forced:
    return _forced[name]
  return name not in TRACED or traced_platform() == "cpu"


def traced_platform() -> str:
  """The platform the program being traced is for: `compiling_for`'s, else JAX's default."""
  return _platform[-1] if _platform else jax.default_backend()


@contextlib.contextmanager
def compiling_for(platform: str) -> Iterator[None]:
  """Traces inside compile for `platform` ('cpu', 'tpu', 'gpu'), e.g. a TPU topology's
  devices on a CPU machine."""
  _platform.append(platform)
  try:
    yield
  finally:
    _platform.pop()


@contextlib.contextmanager
def forced(**choices: bool) -> Iterator[None]:
  """While tracing inside: `name=True` uses the workaround on every platform, `name=False`
  the plain form (measurements and tests; jit traces fresh functions only)."""
  unknown = set(choices) - set(WORKAROUNDS + KEPT)
  if unknown:
    raise ValueError(f"unknown XLA:CPU workarounds {sorted(unknown)}; known: "
                     f"{WORKAROUNDS + KEPT}")
  saved = dict(_forced)
  _forced.update(choices)
  try:
    yield
  finally:
    _forced.clear()
    _forced.update(saved)
