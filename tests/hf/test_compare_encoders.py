"""Parity of the bidirectional encoders and their heads with transformers' PyTorch Reformer
(ReformerModel, ReformerForMaskedLM, ReformerForSequenceClassification,
ReformerForQuestionAnswering), import / export round trips and refusals.

As tests/test_convert.py: tiny models with random weights, HF in float64, LSH rotations
replayed from hash_seed; outputs within 1e-4 (max abs), head-loss gradients within 1e-4
(relative per parameter) under HF's reversible backward.
"""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from reformer_jax import hf  # noqa: E402
from reformer_jax.models import (ReformerEncoder, ReformerForMaskedLM,  # noqa: E402
                                 ReformerForQuestionAnswering, ReformerForSequenceClassification)

TOL = 1e-4
VOCAB, LENGTH = 40, 32
# Bidirectional: both attentions look one chunk ahead (local wrapping around as HF), two
# hash rounds, 3 classes.
BASE = dict(vocab_size=VOCAB, hidden_size=16, attention_head_size=8, num_attention_heads=2,
            feed_forward_size=32, attn_layers=["local", "lsh"], axial_pos_embds=True,
            axial_pos_shape=[4, 8], axial_pos_embds_dim=[8, 8], max_position_embeddings=32,
            local_attn_chunk_length=8, lsh_attn_chunk_length=8, num_buckets=4, num_hashes=2,
            local_num_chunks_after=1, lsh_num_chunks_after=1, is_decoder=False,
            hidden_dropout_prob=0.0, local_attention_probs_dropout_prob=0.0,
            lsh_attention_probs_dropout_prob=0.0)
NUM_LABELS = {"ReformerForQuestionAnswering": 2, "ReformerForSequenceClassification": 3}
OURS = {"ReformerModel": ReformerEncoder, "ReformerForMaskedLM": ReformerForMaskedLM,
        "ReformerForSequenceClassification": ReformerForSequenceClassification,
        "ReformerForQuestionAnswering": ReformerForQuestionAnswering}


def hf_model(architecture, **overrides):
  """A transformers `architecture` with random weights of scale ~0.2, in float64."""
  torch.manual_seed(0)
  config = transformers.ReformerConfig(
      **{**BASE, "num_labels": NUM_LABELS.get(architecture, 2), **overrides})
  model = getattr(transformers, architecture)(config)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * 0.2)
  return model.double()


def _tokens(seed=0):
  return np.random.default_rng(seed).integers(0, VOCAB, (2, LENGTH))


@pytest.mark.parametrize("architecture", list(OURS))
def test_outputs_match_transformers(architecture):
  mask = np.ones((2, LENGTH), bool)
  mask[1, 25:] = False
  result = hf.compare_encoder_with_hf(hf_model(architecture), _tokens(), mask, hash_seed=3)
  assert set(result) == {"hidden"} | {
      "ReformerModel": set(), "ReformerForQuestionAnswering": {"start_logits", "end_logits"}
  }.get(architecture, {"logits"})
  assert max(result.values()) < TOL, result


def test_local_look_around_wraps_as_hf():
  """Without the wrap-around HF's local attention has, chunk 0 would miss the last chunk."""
  model = hf_model("ReformerModel", attn_layers=["local", "local"])
  config, _ = hf.from_hf_model(model)
  assert config.local_wrap and not config.causal
  assert hf.compare_encoder_with_hf(model, _tokens(1))["hidden"] < TOL


@pytest.mark.parametrize("architecture, labels", [
    ("ReformerForSequenceClassification", dict(labels=[1, 2])),
    ("ReformerForQuestionAnswering", dict(start_positions=[3, 10], end_positions=[5, 20])),
    ("ReformerForMaskedLM", dict(labels=np.where(np.arange(LENGTH)[None] % 5 == 0, _tokens(),
                                                 -100))),
])
def test_head_gradients_match_transformers_reversible_backward(architecture, labels):
  result = hf.compare_encoder_gradients_with_hf(hf_model(architecture), _tokens(), hash_seed=5,
                                                **labels)
  assert len(result) == len(list(hf_model(architecture).parameters())) + 1
  assert max(result.values()) < TOL, sorted(result.items(), key=lambda kv: -kv[1])[:3]


@pytest.mark.parametrize("architecture", list(OURS))
def test_export_round_trip(architecture, tmp_path):
  model = hf_model(architecture)
  config, params = hf.from_hf_model(model)
  hf.to_hf(config, params, str(tmp_path), architecture)
  loaded = getattr(transformers, architecture).from_pretrained(str(tmp_path))
  for key, value in loaded.state_dict().items():
    np.testing.assert_allclose(value.numpy(), model.state_dict()[key].numpy(), rtol=1e-6,
                               atol=1e-7)
  ours, params2 = hf.from_hf(str(tmp_path))
  assert type(ours) is OURS[architecture] and ours.config == config.replace(deterministic=True)
  assert hf.architecture_of(ours) == (architecture, NUM_LABELS.get(architecture, 2))
  jax.tree.map(np.testing.assert_array_equal, params2, params)


@pytest.mark.parametrize("change, message", [
    (dict(is_decoder=True, architectures=["ReformerForSequenceClassification"]),
     "is_decoder=True.*set is_decoder=False"),
    (dict(architectures=["ReformerModelWithLMHead"]), "is_decoder=False.*ReformerForMaskedLM"),
    (dict(architectures=["ReformerForQuestionAnswering"], num_labels=3), "num_labels=3"),
    (dict(architectures=["ReformerForSequenceClassification"], num_labels=1), "regression"),
    (dict(architectures=["ReformerForSequenceClassification"],
          problem_type="multi_label_classification"), "multi_label"),
    (dict(architectures=["ReformerForTokenClassification"]), "architecture"),
])
def test_refuses_what_cannot_convert(change, message):
  with pytest.raises(ValueError, match=message):
    hf.config_from_hf({**BASE, **change})


def test_export_refuses_settings_hf_does_not_compute():
  config = hf.config_from_hf({**BASE, "architectures": ["ReformerModel"]})
  with pytest.raises(ValueError, match="local_wrap=False"):
    hf.hf_config_from(config.replace(local_wrap=False), "ReformerModel")
  with pytest.raises(ValueError, match="causal=True"):
    hf.hf_config_from(config.replace(causal=True, lsh_n_chunks_after=0, local_n_chunks_after=0,
                                     strict_causal=False), "ReformerForQuestionAnswering")
  with pytest.raises(ValueError, match="ReformerForMaskedLM"):
    hf.hf_config_from(config, "ReformerModelWithLMHead")
