"""Experiment checks: lengths against the position table, padding notes, batches, the
task's data."""
import numpy as np
import pytest

from reformer_jax.data import ClassificationData, shipped_corpus
from reformer_jax.models import ReformerConfig
from reformer_jax.trainer.experiment import (Experiment, check_length, check_task_data,
                                             padding_note)
from reformer_jax.trainer.tasks import CausalLM, Classification, MaskedLM, SpanQA

_AXIAL = ReformerConfig(d_model=32, d_head=16, axial_shape=(8, 16))


def test_length_beyond_the_axial_table_names_the_valid_lengths():
  check_length(_AXIAL, 128)
  with pytest.raises(ValueError) as info:
    check_length(_AXIAL, 129)
  message = str(info.value)
  assert "valid lengths are 1..128" in message and "(16, 16)" in message
  assert "a trained model's table is fixed by its checkpoint" in message


def test_length_beyond_the_learned_table():
  config = ReformerConfig(d_model=32, d_head=16, positional="learned", max_len=64)
  with pytest.raises(ValueError, match=r"valid lengths are 1\.\.64"):
    check_length(config, 65)


def test_padding_note_says_to_which_length_each_attention_pads():
  config = _AXIAL.replace(local_chunk_len=16, lsh_chunk_len=32)
  assert padding_note(config, 64) is None
  note = padding_note(config, 40)
  assert "local attention pads it to 48 (chunk 16)" in note
  assert "lsh attention pads it to 64 (chunk 32)" in note


def test_batch_must_split_into_micro_batches():
  with pytest.raises(ValueError, match="multiple of Experiment.grad_accum_steps=3"):
    Experiment(model=_AXIAL, data=shipped_corpus, seq_len=64, batch_size=4,
               grad_accum_steps=3)


def test_data_vocabulary_must_fit_the_model():
  exp = Experiment(model=_AXIAL.replace(vocab_size=128), data=shipped_corpus,
                   seq_len=64)
  with pytest.raises(ValueError, match="vocab_size >= 256") as info:
    exp.make_data()
  assert "use data whose ids are below 128" in str(info.value)  # for a trained model


def test_a_source_that_a_task_claims_is_refused_by_the_others():
  labelled = ClassificationData({"train": [np.arange(2, 6)], "eval": [np.arange(2, 5)]},
                                {"train": [1], "eval": [0]}, vocab_size=8, num_labels=2)
  with pytest.raises(ValueError, match=r"ClassificationData is labelled data \(listops.*"
                     r"set Experiment.task = @Classification\(\)"):
    check_task_data(CausalLM(), _AXIAL, 64, labelled, {})
  with pytest.raises(ValueError, match=r"@SpanQA\(\) needs question-answering data "
                     r"\(span_qa_files\), got ClassificationData"):
    check_task_data(SpanQA(), _AXIAL, 64, labelled, {})
  with pytest.raises(ValueError, match="the data has 2 labels but NUM_LABELS=3"):
    check_task_data(Classification(num_labels=3), _AXIAL, 64, labelled,
                    {"Classification.num_labels": "NUM_LABELS"})
  check_task_data(Classification(num_labels=2), _AXIAL, 64, labelled, {})


def test_sampling_after_training_needs_a_task_that_generates():
  with pytest.raises(ValueError, match=r"@MaskedLM\(\) trains a masked LM, which cannot "
                     "generate text; set Experiment.sample_length = 0"):
    Experiment(model=_AXIAL.replace(causal=False), data=shipped_corpus, seq_len=64,
               task=MaskedLM(), sample_length=8)
