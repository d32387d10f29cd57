"""Optimisers and learning-rate schedules (optax), guarded against non-finite steps."""
import dataclasses
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

OPTIMIZERS = ("adam", "adafactor")
SCHEDULES = ("constant", "rsqrt", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Optimiser settings.

  Attributes:
    name: 'adam' (AdamW when weight_decay > 0) or 'adafactor'.
    learning_rate: peak learning rate, reached at the end of the warmup.
    schedule: after a linear warmup, 'constant', 'rsqrt' (trax's
      linear_warmup * rsqrt_decay) or 'cosine' (to zero at the last step).
    warmup_steps: linear warmup length in steps.
    b1, b2, eps: Adam moments and epsilon (trax enwik8: 0.9, 0.98, 1e-9).
    weight_decay: decoupled weight decay (Adam only).
    no_decay: names of parameter leaves that are not decayed: by default the biases and
      LayerNorm scales ('bias', 'scale'). Embeddings ('embedding') and axial position
      tables ('axis_0', ...) are decayed unless named here (docs/training.md).
    clip_norm: global gradient-norm clip; None disables it.
  """
  name: str = "adam"
  learning_rate: float = 1e-3
  schedule: str = "rsqrt"
  warmup_steps: int = 1000
  b1: float = 0.9
  b2: float = 0.98
  eps: float = 1e-9
  weight_decay: float = 0.0
  no_decay: Sequence[str] = ("bias", "scale")
  clip_norm: Optional[float] = 1.0

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(f"OptimizerConfig.name={self.name!r}: use one of "
                       f"{OPTIMIZERS}.")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"OptimizerConfig.schedule={self.schedule!r}: use one "
                       f"of {SCHEDULES}.")
    if self.warmup_steps < 0 or self.learning_rate <= 0:
      raise ValueError("OptimizerConfig needs warmup_steps >= 0 and "
                       f"learning_rate > 0, got {self.warmup_steps} and "
                       f"{self.learning_rate}.")
    if isinstance(self.no_decay, str):
      raise ValueError(f"OptimizerConfig.no_decay={self.no_decay!r} must be a tuple of "
                       f"parameter names, e.g. ({self.no_decay!r},).")


def make_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
  """Learning rate for update `step` (0-based): warmup factor * decay factor."""
  warmup = max(config.warmup_steps, 1)
  total = max(total_steps, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum(1.0, (step + 1.0) / warmup)
    if config.schedule == "rsqrt":
      decay = jnp.sqrt(warmup / jnp.maximum(step + 1.0, warmup))
    elif config.schedule == "cosine":
      progress = jnp.clip((step - config.warmup_steps) /
                          max(total - config.warmup_steps, 1), 0.0, 1.0)
      decay = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    else:
      decay = 1.0
    return config.learning_rate * warm * decay

  return schedule


def make_optimizer(config: OptimizerConfig, total_steps: int):
  """Returns (optax.GradientTransformation, schedule).

  The transformation is wrapped in `optax.apply_if_finite`: an update from
  gradients that are not all finite is rejected (zero updates, the inner state
  kept) and counted in the state (`nonfinite_counts`). It never gives up and
  applies such an update; stopping a run after too many is the trainer's job.
  """
  schedule = make_schedule(config, total_steps)
  if config.name == "adafactor":
    tx = optax.adafactor(learning_rate=schedule)
  elif config.weight_decay:
    tx = optax.chain(optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps),
                     decayed_weights(config.weight_decay, config.no_decay),
                     optax.scale_by_learning_rate(schedule))
  else:
    tx = optax.adam(schedule, b1=config.b1, b2=config.b2, eps=config.eps)
  if config.clip_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(config.clip_norm), tx)
  # notfinite_count saturates at the int32 maximum, so `count > max` never holds.
  tx = optax.apply_if_finite(tx, max_consecutive_errors=int(np.iinfo(np.int32).max))
  return tx, schedule


def decayed_weights(weight_decay: float, no_decay: Sequence[str]
                    ) -> optax.GradientTransformation:
  """optax.add_decayed_weights(weight_decay, mask) with the mask "leaf name not in
  `no_decay`", keeping the unmasked transformation's state (an EmptyState): the chain
  above has the state layout of `optax.adamw`, so checkpoints written before the mask
  restore. (optax's masked form wraps the state in a MaskedState.)"""
  def update(updates, state, params):
    return jax.tree.map(lambda u, p, decayed: u + weight_decay * p if decayed else u,
                        updates, params, decay_mask(params, no_decay)), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def decay_mask(params, no_decay: Sequence[str]):
  """A tree of bools like `params`: True where `decayed_weights` decays the leaf."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _leaf_name(path) not in frozenset(no_decay), params)


def _leaf_name(path) -> str:
  last = path[-1]
  return str(getattr(last, "key", getattr(last, "name", last)))


def nonfinite_counts(opt_state: optax.ApplyIfFiniteState):
  """(consecutive, total) rejected non-finite steps: int32 [] arrays."""
  return opt_state.notfinite_count, opt_state.total_notfinite


def last_step_applied(opt_state: optax.ApplyIfFiniteState):
  """bool []: whether the last update was applied (its gradients were finite)."""
  return opt_state.last_finite


def unguarded(opt_state: optax.ApplyIfFiniteState) -> Any:
  """The optimiser state of `make_optimizer` before it had the guard (checkpoints
  written before the guard hold this)."""
  return opt_state.inner_state


def guard(inner_state: Any) -> optax.ApplyIfFiniteState:
  """The guarded state around an unguarded one: no non-finite step seen."""
  return optax.ApplyIfFiniteState(
      notfinite_count=jnp.zeros([], jnp.int32), last_finite=jnp.array(True),
      total_notfinite=jnp.zeros([], jnp.int32), inner_state=inner_state)
