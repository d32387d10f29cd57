"""Tests for reformer_jax/trainer/tasks/task.py: the protocol is all a task needs.

`SkipOneLM`, a task defined here and nowhere else, trains, evaluates and reports through
the trainer and `evaluate` from a gin binding, with no other file knowing it.
"""
import dataclasses
import json
import math

import gin
import jax.numpy as jnp
import pytest

from reformer_jax import evaluate, train
from reformer_jax.models import ReformerLM
from reformer_jax.trainer import tasks


@dataclasses.dataclass(frozen=True)
class SkipOneLM(tasks.Task):
  """Predicts the token after next from a language-modelling batch: its targets shifted
  one further left, the last position unscored."""
  name = "skip_one_lm"
  description = "a skip-one language model"

  def model(self, config):
    return ReformerLM(config)

  def loss_sums(self, model, params, batch, rngs, key):
    del key
    targets = jnp.roll(batch["targets"], -1, axis=-1)
    weights = batch["weights"].at[..., -1].set(0.)
    return model.apply({"params": params}, batch["inputs"], targets=targets,
                       weights=weights, rngs=rngs)

  def summarize(self, sums):
    return {"loss": float(sums["loss"]) / float(sums["weight"]),
            "scored": float(sums["weight"])}

  def batch_shapes(self, leading, seq_len):
    return tasks.CausalLM().batch_shapes(leading, seq_len)

  def baselines(self, data):
    uniform = math.log(data.vocab_size)
    return {"uniform_loss": tasks.Baseline(uniform, f"a uniform guess: loss {uniform:.3f}")}


gin.external_configurable(SkipOneLM, "SkipOneLM")

SEQ_LEN, BATCH_SIZE = 16, 4
TINY = [f"SEQ_LEN={SEQ_LEN}", f"BATCH_SIZE={BATCH_SIZE}", "TRAIN_STEPS=2", "N_LAYERS=1",
        "D_MODEL=16", "ReformerConfig.d_ff=32", "ReformerConfig.d_head=8",
        "ReformerConfig.attention_types=('local',)", "ReformerConfig.local_chunk_len=8",
        "Experiment.log_every=1", "Experiment.eval_batches=1", "Experiment.sample_length=0"]


def test_a_task_defined_outside_the_package_trains_evaluates_and_reports(tmp_path, capsys):
  summary = train.run(["quickstart.gin"], TINY + ["Experiment.task=@SkipOneLM()"],
                      str(tmp_path))
  assert "a uniform guess: loss 5.545" in capsys.readouterr().out
  assert summary["task"] == "skip_one_lm" and summary["step"] == 2
  assert summary["uniform_loss"] == pytest.approx(math.log(256))
  assert summary["eval_scored"] == BATCH_SIZE * (SEQ_LEN - 1)   # its own weights
  assert math.isfinite(summary["train_loss"]) and math.isfinite(summary["eval_loss"])
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(l["step"], l["split"], l["scored"]) for l in lines] == [
      (1, "train", BATCH_SIZE * (SEQ_LEN - 1)), (2, "train", BATCH_SIZE * (SEQ_LEN - 1)),
      (2, "eval", BATCH_SIZE * (SEQ_LEN - 1))]
  metrics = evaluate.evaluate(str(tmp_path))
  assert metrics["task"] == "skip_one_lm"
  assert metrics["eval_loss"] == pytest.approx(summary["eval_loss"], rel=1e-5)


@pytest.mark.parametrize("task, message", [
    (tasks.Classification(num_labels=3), "set ReformerConfig.causal = False"),
    (tasks.MaskedLM(), "set ReformerConfig.causal = False"),
])
def test_encoder_tasks_refuse_a_causal_config(encoder_config, task, message):
  with pytest.raises(ValueError, match=message):
    task.check(encoder_config.replace(causal=True))
