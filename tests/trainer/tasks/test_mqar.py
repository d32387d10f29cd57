"""Tests for reformer_jax/trainer/tasks/mqar.py: configs/mqar.gin trains and scores answers."""
import json
import math

import pytest

from reformer_jax import train
from reformer_jax.data import mqar
from reformer_jax.models import ReformerConfig
from reformer_jax.trainer import experiment, tasks

TINY = ["SEQ_LEN=32", "BATCH_SIZE=2", "TRAIN_STEPS=2", "NUM_KV_PAIRS=4", "VOCAB_SIZE=32",
        "D_MODEL=16", "ReformerConfig.d_ff=32", "ReformerConfig.d_head=8", "CHUNK_LEN=8",
        "N_HASHES=1", "Experiment.log_every=1", "Experiment.eval_batches=1"]


def test_mqar_config_trains_and_reports_answer_accuracy_and_chance(tmp_path, capsys):
  summary = train.run(["mqar.gin"], TINY, str(tmp_path))
  assert "chance: accuracy 0.2500" in capsys.readouterr().out
  assert summary["task"] == "mqar" and summary["step"] == 2
  assert summary["chance_accuracy"] == 0.25
  assert 0 <= summary["eval_accuracy"] <= 1 and math.isfinite(summary["eval_loss"])
  assert "eval_bits_per_byte" not in summary
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(l["step"], l["split"]) for l in lines] == [(1, "train"), (2, "train"), (2, "eval")]


def test_the_language_model_task_refuses_mqar_data():
  with pytest.raises(ValueError, match=r"set Experiment.task = @MQAR\(\)"):
    experiment.check_task_data(tasks.CausalLM(), ReformerConfig(), 32, mqar(num_kv_pairs=4),
                               {})
