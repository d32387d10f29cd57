"""Next-token language modelling (`ReformerLM`), the default task."""
import dataclasses
from typing import Any, Mapping, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax.models import ReformerConfig, ReformerLM
from reformer_jax.trainer import metrics as metrics_lib
from reformer_jax.trainer.tasks.task import Baseline, Sums, Task


@dataclasses.dataclass(frozen=True)
class CausalLM(Task):
  """Next-token language modelling (gin: `@CausalLM()`, the default task) on a
  language-modelling source: batches {'inputs', 'targets', 'weights'} [batch, L] (positions
  of weight 0 are not scored). Metrics: loss (nats/token), accuracy, bits_per_byte."""
  name = "causal_lm"
  description = "a causal language model"
  hf_architecture = "ReformerModelWithLMHead"
  can_generate = True
  named_in_reports = False

  def model(self, config: ReformerConfig) -> nn.Module:
    return ReformerLM(config)

  def loss_sums(self, model, params, batch, rngs, key) -> Sums:
    """{'loss', 'weight', 'correct'} of `batch` [batch, L]; `key` unused."""
    del key
    return model.apply({"params": params}, batch["inputs"], batch.get("mask"),
                       targets=batch["targets"], weights=batch["weights"], rngs=rngs)

  def summarize(self, sums: Mapping[str, Any]) -> dict:
    """loss (nats/token), accuracy, bits_per_byte."""
    return metrics_lib.summarize(sums)

  def batch_shapes(self, leading: Tuple[int, ...], seq_len: int) -> dict:
    shape = leading + (seq_len,)
    return {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32),
            "targets": jax.ShapeDtypeStruct(shape, jnp.int32),
            "weights": jax.ShapeDtypeStruct(shape, jnp.float32)}

  def baselines(self, data) -> dict:
    """The training split's unigram entropy (`unigram_bits_per_byte`; None without one)."""
    unigram = metrics_lib.unigram_bits(data)
    note = (f"unigram entropy of the training split: {unigram:.3f} bits/byte (the loss of a "
            "model that ignores context)" if unigram is not None else "")
    return {"unigram_bits_per_byte": Baseline(unigram, note)}
