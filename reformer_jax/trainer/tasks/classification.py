"""Sequence classification (`ReformerForSequenceClassification`) on labelled data."""
import dataclasses
import math
from typing import Any, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax.data.classification import ClassificationData
from reformer_jax.models import ReformerConfig, ReformerForSequenceClassification
from reformer_jax.models.heads import classification_sums
from reformer_jax.trainer.tasks.task import Baseline, Sums, Task


@dataclasses.dataclass(frozen=True)
class Classification(Task):
  """Sequence classification (gin: `@Classification()`) on a ClassificationData source:
  batches {'inputs', 'mask' [batch, L], 'labels', 'weights' [batch]}. Metrics: loss
  (nats/example), accuracy; eval adds macro_f1 (from per-class counts) and writes each
  example's logits (`evaluate --predictions`).

  Attributes:
    num_labels: classes; the data's `num_labels` must equal it.
    classifier_dropout: dropout of the head; None = `ReformerConfig.dropout_rate` (as HF).
  """
  num_labels: int = 2
  classifier_dropout: Optional[float] = None
  name = "classification"
  description = "a classifier"
  bidirectional = True
  data_types = (ClassificationData,)
  data_kind = "labelled data (listops, text_label_files, tfds_classification)"
  hf_architecture = "ReformerForSequenceClassification"
  writes_predictions = True

  def check(self, config: ReformerConfig):
    super().check(config)
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

  def targets(self, batch, row: int) -> dict:
    return {"label": batch["labels"][row]}

  def prediction(self, example: Mapping[str, Any]) -> dict:
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

  def check_data(self, data, config, seq_len, names):
    if data.num_labels != self.num_labels:
      label = names.get("Classification.num_labels", "Classification.num_labels")
      raise ValueError(f"the data has {data.num_labels} labels but {label}="
                       f"{self.num_labels}; set it to {data.num_labels}.")

  def baselines(self, data) -> dict:
    """The eval split's majority-class accuracy (`majority_class_accuracy`)."""
    counts = data.label_counts("eval")
    majority = float(counts.max() / counts.sum())
    return {"majority_class_accuracy": Baseline(
        majority, f"majority class of the eval split: accuracy {majority:.4f} (the baseline)")}


def macro_f1(true_positives, predicted, actual) -> float:
  """Mean over classes of F1 = 2 TP / (predicted + actual), counts `[num_labels]`, over the
  classes that occur among the labels or the predictions (scikit-learn's default)."""
  tp, predicted, actual = (np.asarray(x, np.float64) for x in (true_positives, predicted,
                                                                 actual))
  seen = (predicted + actual) > 0
  if not seen.any():
    return math.nan
  return float(np.mean(2 * tp[seen] / (predicted[seen] + actual[seen])))
