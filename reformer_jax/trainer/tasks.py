"""What the trainer trains: the task (gin: `Experiment.task`), a choice at the edge.

A task supplies the model of a ReformerConfig, its loss sums on a batch and its metrics;
the train and eval steps (`steps.py`) call it and stay the same for every task:

  CausalLM        next-token language modelling (`ReformerLM`); the default. Batches
                  {'inputs', 'targets', 'weights'} [batch, L].
  MaskedLM        BERT-style masked LM (`ReformerForMaskedLM`, `bert_masking`: 15% of the
                  real positions, 80% mask id / 10% random / 10% kept), masked inside the
                  step from the step's key, so deterministic from seed and step. Reads the
                  LM batches' 'inputs' (positions with weight 0 are neither masked nor
                  scored).
  Classification  sequence classification (`ReformerForSequenceClassification`). Batches
                  {'inputs', 'mask' [batch, L], 'labels', 'weights' [batch]}
                  (`reformer_jax.data.ClassificationData`).
  SpanQA          extractive question answering (`ReformerForQuestionAnswering`): start /
                  end logits of the answer span. Batches {'inputs', 'mask' [batch, L],
                  'start', 'end', 'weights' [batch]} (`reformer_jax.data.SpanData`).

Loss sums are {'loss', 'weight', 'correct'} (mean loss = loss / weight); a task's eval step
may add counts (Classification: per-class true positives, predictions and labels, for
macro F1; SpanQA: exact matches and span F1) and per-example outputs, which
`evaluate --predictions` writes through the task's `prediction`.
"""
import dataclasses
import math
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax.models import (ReformerConfig, ReformerForMaskedLM,
                                 ReformerForQuestionAnswering,
                                 ReformerForSequenceClassification, ReformerLM, bert_masking)
from reformer_jax.models.heads import classification_sums, span_sums
from reformer_jax.trainer import metrics as metrics_lib

Sums = Dict[str, jnp.ndarray]


@dataclasses.dataclass(frozen=True)
class CausalLM:
  """Next-token language modelling (gin: `@CausalLM()`, the default task)."""
  name = "causal_lm"

  def check(self, config: ReformerConfig):
    del config

  def model(self, config: ReformerConfig) -> nn.Module:
    return ReformerLM(config)

  def loss_sums(self, model, params, batch, rngs, key) -> Sums:
    """{'loss', 'weight', 'correct'} of `batch` [batch, L]; `key` unused."""
    del key
    return model.apply({"params": params}, batch["inputs"], batch.get("mask"),
                       targets=batch["targets"], weights=batch["weights"], rngs=rngs)

  def eval_outputs(self, model, params, batch, key) -> Tuple[Sums, Dict[str, jnp.ndarray]]:
    """(loss sums, per-example outputs: none) with a deterministic model."""
    return self.loss_sums(model, params, batch, {"hash": key}, key), {}

  def summarize(self, sums: Mapping[str, Any]) -> dict:
    """loss (nats/token), accuracy, bits_per_byte."""
    return metrics_lib.summarize(sums)

  def batch_shapes(self, leading: Tuple[int, ...], seq_len: int) -> dict:
    shape = leading + (seq_len,)
    return {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32),
            "targets": jax.ShapeDtypeStruct(shape, jnp.int32),
            "weights": jax.ShapeDtypeStruct(shape, jnp.float32)}


@dataclasses.dataclass(frozen=True)
class MaskedLM(CausalLM):
  """BERT-style masked LM (gin: `@MaskedLM()`) on a language-modelling data source.

  Attributes:
    mask_id: the mask token's id; None = `ReformerConfig.vocab_size - 1`. It must lie at or
      above the data's ids (reserve it: vocab_size = data ids + 1). Random replacements are
      drawn from `[0, mask_id)`.
    rate: the fraction of real positions chosen (BERT: 0.15).
  """
  mask_id: Optional[int] = None
  rate: float = 0.15
  name = "masked_lm"

  def check(self, config: ReformerConfig):
    _check_bidirectional(config, "MaskedLM")
    if not 0. < self.rate < 1.:
      raise ValueError(f"MaskedLM.rate must be in (0, 1), got {self.rate!r}.")
    if self.mask_id is not None and not 1 <= self.mask_id < config.vocab_size:
      raise ValueError(f"MaskedLM.mask_id={self.mask_id} must lie in [1, "
                       f"ReformerConfig.vocab_size={config.vocab_size}).")

  def resolved_mask_id(self, config: ReformerConfig) -> int:
    return config.vocab_size - 1 if self.mask_id is None else self.mask_id

  def model(self, config: ReformerConfig) -> nn.Module:
    return ReformerForMaskedLM(config)

  def _masked(self, model, batch, key):
    mask_id = self.resolved_mask_id(model.config)
    inputs, targets, weights = bert_masking(
        key, batch["inputs"], batch["weights"] > 0, mask_id=mask_id,
        vocab_size=model.config.vocab_size, rate=self.rate, random_ids=(0, mask_id))
    return dict(batch, inputs=inputs, targets=targets, weights=weights)

  def loss_sums(self, model, params, batch, rngs, key) -> Sums:
    """Sums over the masked positions of `batch`, masked from `key`."""
    return CausalLM.loss_sums(self, model, params, self._masked(model, batch, key), rngs,
                              key)

  def eval_outputs(self, model, params, batch, key):
    return self.loss_sums(model, params, batch, {"hash": key}, jax.random.fold_in(key, 1)), {}

  def summarize(self, sums: Mapping[str, Any]) -> dict:
    """loss (nats per masked token), masked_token_accuracy."""
    weight = float(sums["weight"]) or math.nan
    return {"loss": float(sums["loss"]) / weight,
            "masked_token_accuracy": float(sums["correct"]) / weight}


@dataclasses.dataclass(frozen=True)
class Classification:
  """Sequence classification (gin: `@Classification()`) on a ClassificationData source.

  Attributes:
    num_labels: classes; the data's `num_labels` must equal it.
    classifier_dropout: dropout of the head; None = `ReformerConfig.dropout_rate` (as HF).
  """
  num_labels: int = 2
  classifier_dropout: Optional[float] = None
  name = "classification"

  def check(self, config: ReformerConfig):
    _check_bidirectional(config, "Classification")
    if isinstance(self.num_labels, bool) or not isinstance(self.num_labels, int) \
        or self.num_labels < 2:
      raise ValueError(f"Classification.num_labels must be an int >= 2, got "
                       f"{self.num_labels!r}.")

  def model(self, config: ReformerConfig) -> nn.Module:
    return ReformerForSequenceClassification(config, self.num_labels,
                                             self.classifier_dropout)

  def loss_sums(self, model, params, batch, rngs, key) -> Sums:
    del key
    return model.apply({"params": params}, batch["inputs"], batch["mask"],
                       labels=batch["labels"], weights=batch["weights"], rngs=rngs)

  def eval_outputs(self, model, params, batch, key):
    """(sums with per-class counts [num_labels], {'logits' [batch, num_labels]})."""
    logits = model.apply({"params": params}, batch["inputs"], batch["mask"],
                         rngs={"hash": key})
    sums = classification_sums(logits, batch["labels"], batch["weights"])
    predicted = jax.nn.one_hot(jnp.argmax(logits, -1), self.num_labels)
    actual = jax.nn.one_hot(batch["labels"], self.num_labels)
    weights = batch["weights"][:, None]
    sums.update(true_positives=jnp.sum(predicted * actual * weights, 0),
                predicted=jnp.sum(predicted * weights, 0),
                actual=jnp.sum(actual * weights, 0))
    return sums, {"logits": logits}

  @staticmethod
  def targets(batch, row: int) -> dict:
    return {"label": batch["labels"][row]}

  @staticmethod
  def prediction(example: Mapping[str, Any]) -> dict:
    """index, predicted and true label, logits, probabilities of one eval example."""
    logits = np.asarray(example["logits"], np.float64)
    probabilities = np.exp(logits - logits.max())
    return {"predicted": int(np.argmax(logits)), "label": int(example["label"]),
            "logits": logits.tolist(),
            "probabilities": (probabilities / probabilities.sum()).tolist()}

  def summarize(self, sums: Mapping[str, Any]) -> dict:
    """loss (nats/example), accuracy; with the eval counts also macro_f1."""
    weight = float(sums["weight"]) or math.nan
    out = {"loss": float(sums["loss"]) / weight,
           "accuracy": float(sums["correct"]) / weight}
    if "true_positives" in sums:
      out["macro_f1"] = macro_f1(sums["true_positives"], sums["predicted"], sums["actual"])
    return out

  def batch_shapes(self, leading: Tuple[int, ...], seq_len: int) -> dict:
    return {"inputs": jax.ShapeDtypeStruct(leading + (seq_len,), jnp.int32),
            "mask": jax.ShapeDtypeStruct(leading + (seq_len,), jnp.bool_),
            "labels": jax.ShapeDtypeStruct(leading, jnp.int32),
            "weights": jax.ShapeDtypeStruct(leading, jnp.float32)}


@dataclasses.dataclass(frozen=True)
class SpanQA:
  """Extractive question answering (gin: `@SpanQA()`) on a SpanData source.

  The loss is HF's: the mean of the start and end cross-entropies. The predicted span is
  the best-scoring `s <= e` (start logit at s + end logit at e), found in one pass over
  the positions (no [length, length] scores). Eval metrics over examples: exact_match
  (both ends right) and f1 (overlap of the predicted and true positions, SQuAD's F1 over
  byte positions instead of words).
  """
  name = "span_qa"

  def check(self, config: ReformerConfig):
    _check_bidirectional(config, "SpanQA")

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

  @staticmethod
  def targets(batch, row: int) -> dict:
    return {"start": batch["start"][row], "end": batch["end"][row]}

  @staticmethod
  def prediction(example: Mapping[str, Any]) -> dict:
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


def macro_f1(true_positives, predicted, actual) -> float:
  """Mean over classes of F1 = 2 TP / (predicted + actual), counts `[num_labels]`, over the
  classes that occur among the labels or the predictions (scikit-learn's default)."""
  tp, predicted, actual = (np.asarray(x, np.float64) for x in (true_positives, predicted,
                                                                 actual))
  seen = (predicted + actual) > 0
  if not seen.any():
    return math.nan
  return float(np.mean(2 * tp[seen] / (predicted[seen] + actual[seen])))


def _check_bidirectional(config: ReformerConfig, task: str):
  if config.causal:
    raise ValueError(f"Experiment.task = @{task}() trains a bidirectional encoder but "
                     "ReformerConfig.causal = True; set ReformerConfig.causal = False.")


TASKS = (CausalLM, MaskedLM, Classification, SpanQA)
