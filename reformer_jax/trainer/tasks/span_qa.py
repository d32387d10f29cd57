"""Extractive question answering (`ReformerForQuestionAnswering`) on span data."""
import dataclasses
import math
from typing import Any, Mapping, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax.data.span_qa import SpanData
from reformer_jax.models import ReformerConfig, ReformerForQuestionAnswering
from reformer_jax.models.heads import span_sums
from reformer_jax.trainer.tasks.task import Sums, Task


@dataclasses.dataclass(frozen=True)
class SpanQA(Task):
  """Extractive question answering (gin: `@SpanQA()`) on a SpanData source: batches
  {'inputs', 'mask' [batch, L], 'start', 'end', 'weights' [batch]}.

  The loss is HF's: the mean of the start and end cross-entropies. The predicted span is
  the best-scoring `s <= e` (start logit at s + end logit at e), found in one pass over
  the positions (no [length, length] scores). Eval metrics over examples: exact_match
  (both ends right) and f1 (overlap of the predicted and true positions, SQuAD's F1 over
  byte positions instead of words).
  """
  name = "span_qa"
  description = "a span-QA model"
  bidirectional = True
  data_types = (SpanData,)
  data_kind = "question-answering data (span_qa_files)"
  hf_architecture = "ReformerForQuestionAnswering"
  writes_predictions = True

  def model(self, config: ReformerConfig) -> nn.Module:
    return ReformerForQuestionAnswering(config)

  def loss_sums(self, model, params, batch, rngs, key) -> Sums:
    """{'loss', 'weight', 'correct'} over the answer ends inside the inputs."""
    del key
    return model.apply({"params": params}, batch["inputs"], batch["mask"],
                       start_positions=batch["start"], end_positions=batch["end"], rngs=rngs)

  def eval_outputs(self, model, params, batch, key):
    """(sums with 'examples', 'exact_match', 'f1', {'predicted_start', 'predicted_end'})."""
    start_logits, end_logits = model.apply({"params": params}, batch["inputs"],
                                           batch["mask"], rngs={"hash": key})
    sums = span_sums(start_logits, end_logits, batch["start"], batch["end"])
    padding = jnp.where(batch["mask"], 0., -jnp.inf)  # spans of real positions only
    start, end = best_span(start_logits + padding, end_logits + padding)
    overlap = jnp.maximum(jnp.minimum(end, batch["end"]) - jnp.maximum(start, batch["start"])
                          + 1, 0)
    f1 = 2 * overlap / (end - start + batch["end"] - batch["start"] + 2)
    exact = (start == batch["start"]) & (end == batch["end"])
    weights = batch["weights"]
    sums.update(examples=jnp.sum(weights), exact_match=jnp.sum(exact * weights),
                f1=jnp.sum(f1 * weights))
    return sums, {"predicted_start": start, "predicted_end": end}

  def targets(self, batch, row: int) -> dict:
    return {"start": batch["start"][row], "end": batch["end"][row]}

  def prediction(self, example: Mapping[str, Any]) -> dict:
    """Predicted and true span (inclusive input positions) of one eval example."""
    span = {k: int(example[k]) for k in ("predicted_start", "predicted_end", "start", "end")}
    return {**span, "exact_match": (span["predicted_start"], span["predicted_end"]) ==
            (span["start"], span["end"])}

  def summarize(self, sums: Mapping[str, Any]) -> dict:
    """loss (nats per answer end), accuracy (answer ends hit); eval: exact_match, f1."""
    weight = float(sums["weight"]) or math.nan
    out = {"loss": float(sums["loss"]) / weight, "accuracy": float(sums["correct"]) / weight}
    if "examples" in sums:
      examples = float(sums["examples"]) or math.nan
      out.update(exact_match=float(sums["exact_match"]) / examples,
                 f1=float(sums["f1"]) / examples)
    return out

  def batch_shapes(self, leading: Tuple[int, ...], seq_len: int) -> dict:
    return {"inputs": jax.ShapeDtypeStruct(leading + (seq_len,), jnp.int32),
            "mask": jax.ShapeDtypeStruct(leading + (seq_len,), jnp.bool_),
            "start": jax.ShapeDtypeStruct(leading, jnp.int32),
            "end": jax.ShapeDtypeStruct(leading, jnp.int32),
            "weights": jax.ShapeDtypeStruct(leading, jnp.float32)}

  def check_data(self, data, config, seq_len, names):
    """Every answer must end inside `seq_len` (`SpanData.check_fits`)."""
    data.check_fits(seq_len, names.get("Experiment.seq_len", "Experiment.seq_len"))


def best_span(start_logits: jnp.ndarray, end_logits: jnp.ndarray
              ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """`(start, end)` `[batch]` maximising start_logits[s] + end_logits[e] over s <= e, from
  logits `[batch, length]`: a running maximum of the start logits (ties: the first)."""
  positions = jnp.arange(start_logits.shape[1])
  best_start = jax.lax.cummax(start_logits, axis=1)
  # Where the running maximum is: the last position that exceeded every earlier one.
  earlier = jnp.concatenate([jnp.full_like(best_start[:, :1], -jnp.inf), best_start[:, :-1]],
                            axis=1)
  argmax_start = jax.lax.cummax(jnp.where(start_logits > earlier, positions, 0), axis=1)
  end = jnp.argmax(best_start + end_logits, axis=1)
  start = jnp.take_along_axis(argmax_start, end[:, None], axis=1)[:, 0]
  return start.astype(jnp.int32), end.astype(jnp.int32)
