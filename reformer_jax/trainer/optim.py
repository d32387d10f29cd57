"""Optimisers and learning-rate schedules (optax)."""
import dataclasses
from typing import Optional

import jax.numpy as jnp
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
  """Returns (optax.GradientTransformation, schedule)."""
  schedule = make_schedule(config, total_steps)
  if config.name == "adafactor":
    tx = optax.adafactor(learning_rate=schedule)
  elif config.weight_decay:
    tx = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                     weight_decay=config.weight_decay)
  else:
    tx = optax.adam(schedule, b1=config.b1, b2=config.b2, eps=config.eps)
  if config.clip_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(config.clip_norm), tx)
  return tx, schedule
