"""Multi-query associative recall (`reformer_jax.data.mqar`): a causal LM scored on the answers."""
import dataclasses
import math
from typing import Any, Mapping

from reformer_jax.data.mqar import MQARData
from reformer_jax.trainer.tasks.causal_lm import CausalLM
from reformer_jax.trainer.tasks.task import Baseline


@dataclasses.dataclass(frozen=True)
class MQAR(CausalLM):
  """MQAR (gin: `@MQAR()`) on an `@mqar` source: `ReformerLM` trained on {'inputs',
  'targets', 'weights'} [batch, L] whose weights are 1 at the query positions only, so the
  loss and accuracy are the answers'. Metrics: loss (nats/answer), accuracy."""
  name = "mqar"
  description = "an associative-recall model"
  data_types = (MQARData,)
  data_kind = "MQAR data (mqar)"
  can_generate = False
  named_in_reports = True

  def summarize(self, sums: Mapping[str, Any]) -> dict:
    """loss (nats/answer), accuracy over the answers."""
    weight = float(sums["weight"]) or math.nan
    return {"loss": float(sums["loss"]) / weight, "accuracy": float(sums["correct"]) / weight}

  def baselines(self, data: MQARData) -> dict:
    """`chance_accuracy`: 1 / num_kv_pairs, a model that answers with one of the example's
    values without recalling which belongs to the key."""
    chance = 1. / data.num_kv_pairs
    return {"chance_accuracy": Baseline(chance, f"chance: accuracy {chance:.4f} (one of the "
                                        f"{data.num_kv_pairs} values of the example)")}
