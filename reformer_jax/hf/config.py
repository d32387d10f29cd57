"""transformers `ReformerConfig` <-> `ReformerConfig`: defaults, checks and field mapping."""
import json
import math
import os
from typing import Any, Dict, Mapping, Optional

from reformer_jax.layers.feed_forward import ACTIVATIONS
from reformer_jax.models import ReformerConfig

# transformers' ReformerConfig defaults (5.23, same in 4.x): config.json written by
# `save_pretrained` may leave out values equal to these.
HF_DEFAULTS = {
    "attention_head_size": 64,
    "attn_layers": ["local", "lsh", "local", "lsh", "local", "lsh"],
    "axial_pos_embds": True,
    "axial_pos_shape": [64, 64],
    "axial_pos_embds_dim": [64, 192],
    "chunk_size_feed_forward": 0,
    "feed_forward_size": 512,
    "hash_seed": None,
    "hidden_act": "relu",
    "hidden_dropout_prob": 0.05,
    "hidden_size": 256,
    "is_decoder": False,
    "layer_norm_eps": 1e-12,
    "local_num_chunks_before": 1,
    "local_num_chunks_after": 0,
    "local_attention_probs_dropout_prob": 0.05,
    "local_attn_chunk_length": 64,
    "lsh_attn_chunk_length": 64,
    "lsh_attention_probs_dropout_prob": 0.0,
    "lsh_num_chunks_before": 1,
    "lsh_num_chunks_after": 0,
    "max_position_embeddings": 4096,
    "num_attention_heads": 12,
    "num_buckets": None,
    "num_hashes": 1,
    "pad_token_id": 0,
    "vocab_size": 320,
}

# transformers' ACT2FN name -> reformer_jax activation name (same function).
HF_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_new",
                  "gelu_pytorch_tanh": "gelu_new", "silu": "silu", "swish": "swish",
                  "tanh": "tanh"}



def read_hf_config(hf_dir: str) -> Dict[str, Any]:
  """`hf_dir/config.json` with transformers' defaults filled in."""
  path = os.path.join(hf_dir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no config.json in {hf_dir!r}: give a directory written by "
                            "transformers' save_pretrained (or downloaded from the Hub)")
  with open(path) as f:
    hf = json.load(f)
  if hf.get("model_type") != "reformer":
    raise ValueError(f"{path} has model_type {hf.get('model_type')!r}, not 'reformer'")
  return {**HF_DEFAULTS, **hf}


# The transformers Reformer classes that convert, by the name config.json's `architectures`
# gives them: the causal LM, the bare bidirectional encoder, and the encoder's three heads.
LM = "ReformerModelWithLMHead"
ARCHITECTURES = (LM, "ReformerModel", "ReformerForMaskedLM", "ReformerForSequenceClassification",
                 "ReformerForQuestionAnswering")


def hf_architecture(hf: Mapping[str, Any]) -> str:
  """The transformers class a config names (`architectures`, one of `ARCHITECTURES`).

  Without `architectures`: ReformerModelWithLMHead for `is_decoder=True`, else ReformerModel.
  """
  hf = {**HF_DEFAULTS, **hf}
  architectures = hf.get("architectures") or [LM if hf["is_decoder"] else "ReformerModel"]
  if len(architectures) != 1 or architectures[0] not in ARCHITECTURES:
    raise ValueError(f"unsupported architecture {architectures}: give one of {ARCHITECTURES}")
  return architectures[0]


def hf_num_labels(hf: Mapping[str, Any]) -> int:
  """The classes of a sequence-classification config (transformers' default: 2)."""
  if hf.get("num_labels") is not None:
    return int(hf["num_labels"])
  return len(hf["id2label"]) if hf.get("id2label") else 2


def config_from_hf(hf: Mapping[str, Any]) -> ReformerConfig:
  """The ReformerConfig that computes what the transformers model of `hf` computes.

  `hf_architecture(hf)` says which model: `ReformerModelWithLMHead` (causal,
  `is_decoder=True`) or a bidirectional encoder (`is_decoder=False`; local attention with
  HF's wrapping look-around, `local_wrap=True`).

  Args:
    hf: a transformers Reformer config as a dict (`read_hf_config`, or
      `hf_config.to_dict()`); missing keys take transformers' defaults.

  Raises:
    ValueError: for settings reformer_jax cannot reproduce, naming them.
  """
  hf = {**HF_DEFAULTS, **hf}
  architecture = hf_architecture(hf)
  causal = bool(hf["is_decoder"])
  if architecture == LM and not causal:
    raise ValueError("unsupported config: ReformerModelWithLMHead with is_decoder=False (an "
                     "encoder-only, bidirectional model under the LM head); set is_decoder="
                     "True, or architectures=['ReformerForMaskedLM'] for a masked LM")
  if architecture != LM and causal:
    raise ValueError(f"unsupported config: {architecture} with is_decoder=True; reformer_jax's "
                     "encoders are bidirectional (causal attention lets position 0 see only "
                     "itself): set is_decoder=False")
  if architecture == "ReformerForSequenceClassification":
    problem = hf.get("problem_type")
    if problem not in (None, "single_label_classification") or hf_num_labels(hf) < 2:
      raise ValueError(f"unsupported config: problem_type={problem!r} with num_labels="
                       f"{hf_num_labels(hf)}; only single-label classification (num_labels "
                       ">= 2) converts, not regression or multi-label")
  if architecture == "ReformerForQuestionAnswering" and hf_num_labels(hf) != 2:
    raise ValueError(f"unsupported config: ReformerForQuestionAnswering with num_labels="
                     f"{hf_num_labels(hf)}; its qa_outputs must give 2 (start, end) logits")
  unknown = sorted(set(hf["attn_layers"]) - {"local", "lsh"})
  if unknown or not hf["attn_layers"]:
    raise ValueError(f"unsupported attn_layers {hf['attn_layers']}: each entry must be "
                     "'local' or 'lsh'")
  if causal and (hf["local_num_chunks_after"] or hf["lsh_num_chunks_after"]):
    raise ValueError("unsupported config: a causal LM needs local_num_chunks_after = "
                     "lsh_num_chunks_after = 0 (transformers refuses it too)")
  act = hf["hidden_act"]
  if act not in HF_ACTIVATIONS or HF_ACTIVATIONS[act] not in ACTIVATIONS:
    raise ValueError(f"unsupported hidden_act {act!r}; reformer_jax has "
                     f"{sorted(HF_ACTIVATIONS)}")
  if hf.get("tie_word_embeddings"):
    raise ValueError("unsupported config: tie_word_embeddings=True (the Reformer's LM head "
                     "reads 2 * hidden_size features and cannot share the embedding)")
  n_buckets = hf["num_buckets"]
  if isinstance(n_buckets, list):
    n_buckets = tuple(n_buckets)
  if hf["axial_pos_embds"]:
    positional = dict(positional="axial", axial_shape=tuple(hf["axial_pos_shape"]),
                      axial_dims=tuple(hf["axial_pos_embds_dim"]))
  else:
    positional = dict(positional="learned", max_len=hf["max_position_embeddings"])
  return ReformerConfig(
      vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], d_ff=hf["feed_forward_size"],
      n_heads=hf["num_attention_heads"], d_head=hf["attention_head_size"],
      n_layers=len(hf["attn_layers"]), attention_types=tuple(hf["attn_layers"]),
      causal=causal, strict_causal=False, local_wrap=not causal, **positional,
      dropout_rate=hf["hidden_dropout_prob"],
      attention_dropout=hf["local_attention_probs_dropout_prob"],
      lsh_attention_dropout=hf["lsh_attention_probs_dropout_prob"],
      ff_activation=HF_ACTIVATIONS[act], ff_chunk_size=hf["chunk_size_feed_forward"] or None,
      n_hashes=hf["num_hashes"], n_buckets=n_buckets,
      lsh_chunk_len=hf["lsh_attn_chunk_length"],
      lsh_n_chunks_before=hf["lsh_num_chunks_before"],
      lsh_n_chunks_after=hf["lsh_num_chunks_after"],
      local_chunk_len=hf["local_attn_chunk_length"],
      local_n_chunks_before=hf["local_num_chunks_before"],
      local_n_chunks_after=hf["local_num_chunks_after"],
      correct_duplicates=False, layer_norm_eps=hf["layer_norm_eps"], lm_head_bias=True)


def hf_config_from(config: ReformerConfig, architecture: str = LM,
                   num_labels: Optional[int] = None) -> Dict[str, Any]:
  """The transformers config.json dict of `config` as `architecture` (inverse of
  `config_from_hf`); `num_labels`: the classes of ReformerForSequenceClassification.

  Raises:
    ValueError: when transformers would compute something else, naming the setting.
  """
  if architecture not in ARCHITECTURES:
    raise ValueError(f"unknown architecture {architecture!r}; choose from {ARCHITECTURES}")
  problems = []
  types = config.layer_attention_types()
  if architecture == LM and not config.causal:
    problems.append("causal=False (transformers' LM head model is causal; export a "
                    "bidirectional model as ReformerForMaskedLM)")
  if architecture != LM and config.causal:
    problems.append(f"causal=True ({architecture} is bidirectional here)")
  if set(types) - {"local", "lsh"}:
    problems.append(f"attention types {sorted(set(types) - {'local', 'lsh'})} (HF has only "
                    "'local' and 'lsh')")
  if config.causal and "lsh" in types and config.strict_causal:
    problems.append("strict_causal=True (HF's LSH windows see more keys; export "
                    "config.replace(strict_causal=False) if that is what you want)")
  if not config.causal and "local" in types and not config.local_wrap:
    problems.append("local_wrap=False (HF's bidirectional local attention wraps around: "
                    "chunk 0 sees the last chunk; export config.replace(local_wrap=True) if "
                    "that is what you want)")
  if config.correct_duplicates:
    problems.append("correct_duplicates=True (HF does not correct duplicates)")
  if config.causal and (config.local_n_chunks_after or config.lsh_n_chunks_after):
    problems.append("n_chunks_after > 0 (HF's causal LM refuses it)")
  if config.positional not in ("axial", "learned"):
    problems.append(f"positional={config.positional!r} (HF has 'axial' and 'learned')")
  if config.positional == "axial" and len(config.resolved_axial_shape) != 2:
    problems.append(f"axial_shape {config.resolved_axial_shape} (HF evaluates two axes only)")
  hf_act = {ours: hf for hf, ours in reversed(HF_ACTIVATIONS.items())}
  hf_act["gelu_approx"] = "gelu_new"
  if config.ff_activation not in hf_act:
    problems.append(f"ff_activation={config.ff_activation!r}")
  if problems:
    raise ValueError("cannot export to transformers: " + "; ".join(problems))
  n_buckets = config.n_buckets
  hf = {
      "architectures": [architecture], "model_type": "reformer",
      "vocab_size": config.vocab_size, "hidden_size": config.d_model,
      "feed_forward_size": config.d_ff, "num_attention_heads": config.n_heads,
      "attention_head_size": config.d_head, "attn_layers": list(types),
      "is_decoder": config.causal, "hidden_act": hf_act[config.ff_activation],
      "hidden_dropout_prob": config.dropout_rate,
      "local_attention_probs_dropout_prob": config.attention_dropout,
      "lsh_attention_probs_dropout_prob": config.lsh_attention_dropout,
      "chunk_size_feed_forward": config.ff_chunk_size or 0,
      "num_hashes": config.n_hashes,
      "num_buckets": list(n_buckets) if isinstance(n_buckets, tuple) else n_buckets,
      "lsh_attn_chunk_length": config.lsh_chunk_len,
      "lsh_num_chunks_before": config.lsh_n_chunks_before,
      "lsh_num_chunks_after": config.lsh_n_chunks_after,
      "local_attn_chunk_length": config.local_chunk_len,
      "local_num_chunks_before": config.local_n_chunks_before,
      "local_num_chunks_after": config.local_n_chunks_after,
      "layer_norm_eps": config.layer_norm_eps, "hash_seed": None,
      "tie_word_embeddings": False,
  }
  if architecture == "ReformerForSequenceClassification":
    hf.update(num_labels=num_labels or 2, problem_type="single_label_classification")
  elif architecture == "ReformerForQuestionAnswering":
    hf.update(num_labels=2)
  if config.positional == "axial":
    shape = list(config.resolved_axial_shape)
    hf.update(axial_pos_embds=True, axial_pos_shape=shape,
              axial_pos_embds_dim=list(config.resolved_axial_dims),
              max_position_embeddings=math.prod(shape))
  else:
    hf.update(axial_pos_embds=False, max_position_embeddings=config.max_len)
  return hf
