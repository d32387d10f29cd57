r"""Hugging Face transformers Reformer <-> reformer_jax: configs, weights and workdirs.

Import a `ReformerModelWithLMHead` directory (config.json + model.safetensors, sharded
safetensors, or a PyTorch pytorch_model.bin) as a reformer_jax workdir that
`reformer_jax.sample`, `.evaluate` and `.train` (fine-tuning) use as is:

  python -m reformer_jax.convert --hf_dir=DIR --workdir=OUT [--seq_len=4096] \
      [--token_offset=2] [--data_file=enwik8] [--verify]

or export a workdir's latest checkpoint as a transformers directory:

  python -m reformer_jax.convert --workdir=OUT --to_hf_dir=DIR

In Python, `from_hf(DIR)` returns `(ReformerLM, params)` (`from_hf_model` converts a torch
model in memory) and `to_hf(config, params, DIR)` writes a directory that
`ReformerModelWithLMHead.from_pretrained` loads.

An imported model computes what transformers computes: LSH attention uses Hugging Face's
chunk windows (`strict_causal=False`) and the LM head adds `lm_head.bias` (as
transformers 4.x did; 5.x keeps the parameter but no longer adds it, which changes no
logit while the bias is zero, its initial value, and drops a 4.x-trained bias). Settings
reformer_jax cannot reproduce (an encoder-only / masked-LM config, a head other than the
LM head, unknown attention types or activations) raise ValueError saying which.

`compare_with_hf` and `compare_gradients_with_hf` run a torch model and its conversion on
the same batch (needs torch and transformers); LSH rotations are replayed from
`hash_seed` exactly as HF draws them (`hf_rotations`), with the bucket count HF uses
(`hf_num_buckets`).
"""
import contextlib
import dataclasses
import functools
import json
import math
import os
import pathlib
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from reformer_jax.data.offset_bytes import offset_tokens
from reformer_jax.layers.feed_forward import ACTIVATIONS
from reformer_jax.models import ReformerConfig, ReformerLM
from reformer_jax.trainer.experiment import max_length

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

_PREFIX = "reformer."
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


# ---------------------------------------------------------------------------------------
# Configs.


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


def config_from_hf(hf: Mapping[str, Any]) -> ReformerConfig:
  """The ReformerConfig that computes what `ReformerModelWithLMHead(hf)` computes.

  Args:
    hf: a transformers Reformer config as a dict (`read_hf_config`, or
      `hf_config.to_dict()`); missing keys take transformers' defaults.

  Raises:
    ValueError: for settings reformer_jax cannot reproduce, naming them.
  """
  hf = {**HF_DEFAULTS, **hf}
  architectures = hf.get("architectures") or ["ReformerModelWithLMHead"]
  if any(a != "ReformerModelWithLMHead" for a in architectures):
    raise ValueError(f"unsupported architecture {architectures}: only the causal language "
                     "model ReformerModelWithLMHead converts (reformer_jax has no masked-LM, "
                     "classification or question-answering head)")
  if not hf["is_decoder"]:
    raise ValueError("unsupported config: is_decoder=False is an encoder-only (bidirectional) "
                     "Reformer; reformer_jax converts causal language models only (its "
                     "non-causal local attention does not wrap around the sequence as HF's "
                     "does, so outputs would differ)")
  unknown = sorted(set(hf["attn_layers"]) - {"local", "lsh"})
  if unknown or not hf["attn_layers"]:
    raise ValueError(f"unsupported attn_layers {hf['attn_layers']}: each entry must be "
                     "'local' or 'lsh'")
  if hf["local_num_chunks_after"] or hf["lsh_num_chunks_after"]:
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
      causal=True, strict_causal=False, **positional,
      dropout_rate=hf["hidden_dropout_prob"],
      attention_dropout=hf["local_attention_probs_dropout_prob"],
      lsh_attention_dropout=hf["lsh_attention_probs_dropout_prob"],
      ff_activation=HF_ACTIVATIONS[act], ff_chunk_size=hf["chunk_size_feed_forward"] or None,
      n_hashes=hf["num_hashes"], n_buckets=n_buckets,
      lsh_chunk_len=hf["lsh_attn_chunk_length"],
      lsh_n_chunks_before=hf["lsh_num_chunks_before"], lsh_n_chunks_after=0,
      local_chunk_len=hf["local_attn_chunk_length"],
      local_n_chunks_before=hf["local_num_chunks_before"], local_n_chunks_after=0,
      correct_duplicates=False, layer_norm_eps=hf["layer_norm_eps"], lm_head_bias=True)


def hf_config_from(config: ReformerConfig) -> Dict[str, Any]:
  """The transformers config.json dict of `config` (inverse of `config_from_hf`).

  Raises:
    ValueError: when transformers would compute something else, naming the setting.
  """
  problems = []
  types = config.layer_attention_types()
  if not config.causal:
    problems.append("causal=False (transformers' LM head model is causal)")
  if set(types) - {"local", "lsh"}:
    problems.append(f"attention types {sorted(set(types) - {'local', 'lsh'})} (HF has only "
                    "'local' and 'lsh')")
  if "lsh" in types and config.strict_causal:
    problems.append("strict_causal=True (HF's LSH windows see more keys; export "
                    "config.replace(strict_causal=False) if that is what you want)")
  if config.correct_duplicates:
    problems.append("correct_duplicates=True (HF does not correct duplicates)")
  if config.local_n_chunks_after or config.lsh_n_chunks_after:
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
      "architectures": ["ReformerModelWithLMHead"], "model_type": "reformer",
      "vocab_size": config.vocab_size, "hidden_size": config.d_model,
      "feed_forward_size": config.d_ff, "num_attention_heads": config.n_heads,
      "attention_head_size": config.d_head, "attn_layers": list(types),
      "is_decoder": True, "hidden_act": hf_act[config.ff_activation],
      "hidden_dropout_prob": config.dropout_rate,
      "local_attention_probs_dropout_prob": config.attention_dropout,
      "lsh_attention_probs_dropout_prob": config.lsh_attention_dropout,
      "chunk_size_feed_forward": config.ff_chunk_size or 0,
      "num_hashes": config.n_hashes,
      "num_buckets": list(n_buckets) if isinstance(n_buckets, tuple) else n_buckets,
      "lsh_attn_chunk_length": config.lsh_chunk_len,
      "lsh_num_chunks_before": config.lsh_n_chunks_before, "lsh_num_chunks_after": 0,
      "local_attn_chunk_length": config.local_chunk_len,
      "local_num_chunks_before": config.local_n_chunks_before, "local_num_chunks_after": 0,
      "layer_norm_eps": config.layer_norm_eps, "hash_seed": None,
      "tie_word_embeddings": False,
  }
  if config.positional == "axial":
    shape = list(config.resolved_axial_shape)
    hf.update(axial_pos_embds=True, axial_pos_shape=shape,
              axial_pos_embds_dim=list(config.resolved_axial_dims),
              max_position_embeddings=math.prod(shape))
  else:
    hf.update(axial_pos_embds=False, max_position_embeddings=config.max_len)
  return hf


# ---------------------------------------------------------------------------------------
# Weights.


def _weight_names(config: ReformerConfig) -> List[Tuple[str, Tuple[str, ...], str]]:
  """(HF state_dict key, our param path, transform) for every parameter.

  Transforms: 'T' (torch Linear `[out, in]` <-> Flax kernel `[in, out]`), 'axial{i}'
  (HF's broadcastable `[1, .., s_i, .., 1, d_i]` <-> `[s_i, d_i]`), '' (as is).
  """
  names = [("reformer.embeddings.word_embeddings.weight", ("token_embed", "embedding"), "")]
  if config.positional == "axial":
    for i in range(len(config.resolved_axial_shape)):
      names.append((f"reformer.embeddings.position_embeddings.weights.{i}",
                    ("positional", f"axis_{i}"), f"axial{i}"))
  else:
    names.append(("reformer.embeddings.position_embeddings.embedding.weight",
                  ("positional", "embedding"), ""))
  for i, kind in enumerate(config.layer_attention_types()):
    hf, ours = f"reformer.encoder.layers.{i}.", ("encoder", f"layer_{i}")
    attn, ff = ours + ("attention",), ours + ("feed_forward",)
    projections = ("query_key", "value") if kind == "lsh" else ("query", "key", "value")
    names += [(hf + "attention.layer_norm.weight", attn + ("norm", "scale"), ""),
              (hf + "attention.layer_norm.bias", attn + ("norm", "bias"), "")]
    names += [(hf + f"attention.self_attention.{p}.weight",
               attn + ("attention", p, "kernel"), "T") for p in projections]
    names += [(hf + "attention.output.dense.weight", attn + ("attention", "out", "kernel"), "T"),
              (hf + "feed_forward.layer_norm.weight", ff + ("norm", "scale"), ""),
              (hf + "feed_forward.layer_norm.bias", ff + ("norm", "bias"), ""),
              (hf + "feed_forward.dense.dense.weight", ff + ("feed_forward", "wi", "kernel"), "T"),
              (hf + "feed_forward.dense.dense.bias", ff + ("feed_forward", "wi", "bias"), ""),
              (hf + "feed_forward.output.dense.weight", ff + ("feed_forward", "wo", "kernel"),
               "T"),
              (hf + "feed_forward.output.dense.bias", ff + ("feed_forward", "wo", "bias"), "")]
  names += [("reformer.encoder.layer_norm.weight", ("final_norm", "scale"), ""),
            ("reformer.encoder.layer_norm.bias", ("final_norm", "bias"), ""),
            ("lm_head.decoder.weight", ("lm_head", "kernel"), "T"),
            ("lm_head.bias", ("lm_head", "bias"), "")]
  return names


def abstract_params(config: ReformerConfig):
  """ShapeDtypeStructs of `ReformerLM(config)`'s parameters (nothing is computed)."""
  length = 2 * max(config.local_chunk_len, config.lsh_chunk_len)
  if config.positional == "learned":
    length = min(length, config.max_len)
  model = ReformerLM(config.replace(deterministic=True))
  init = lambda: model.init({"params": jax.random.PRNGKey(0), "hash": jax.random.PRNGKey(1)},
                            jnp.zeros((1, length), jnp.int32))["params"]
  return jax.eval_shape(init)


def params_from_hf(state_dict: Mapping[str, np.ndarray], config: ReformerConfig):
  """reformer_jax params (nested dict of float32 numpy arrays) from an HF state_dict.

  Accepts transformers 4.x checkpoints, whose LM head also stores the (tied)
  `lm_head.decoder.bias`. Raises ValueError naming missing, unexpected or misshaped weights.
  """
  state_dict = dict(state_dict)
  if "lm_head.decoder.weight" not in state_dict:
    what = ("a bare ReformerModel (no LM head)" if any(k.startswith("encoder.")
                                                        for k in state_dict) else
            "not a ReformerModelWithLMHead")
    raise ValueError(f"unsupported weights: lm_head.decoder.weight is missing ({what}); "
                     "only the causal language model converts")
  decoder_bias = state_dict.pop("lm_head.decoder.bias", None)
  if decoder_bias is not None:
    if "lm_head.bias" in state_dict and not np.array_equal(decoder_bias,
                                                           state_dict["lm_head.bias"]):
      raise ValueError("lm_head.bias and lm_head.decoder.bias differ; a transformers "
                       "checkpoint ties them, so this one is not understood")
    state_dict["lm_head.bias"] = decoder_bias
  shapes = flax.traverse_util.flatten_dict(abstract_params(config))
  params, missing = {}, []
  for key, path, transform in _weight_names(config):
    if key not in state_dict:
      missing.append(key)
      continue
    value = np.asarray(state_dict.pop(key), np.float32)
    if transform == "T":
      value = value.T
    elif transform.startswith("axial"):
      value = value.reshape(value.shape[int(transform[5:])], value.shape[-1])
    if value.shape != shapes[path].shape:
      raise ValueError(f"{key} has shape {value.shape} after conversion but the config "
                       f"needs {shapes[path].shape} for {'/'.join(path)}: config.json and "
                       "the weights disagree")
    params[path] = value
  if missing or state_dict:
    raise ValueError(f"weights do not match the config: missing {missing}, unsupported "
                     f"extra {sorted(state_dict)}")
  return flax.traverse_util.unflatten_dict(params)


def params_to_hf(params, config: ReformerConfig) -> Dict[str, np.ndarray]:
  """The transformers state_dict (float32 numpy) of reformer_jax `params`."""
  flat = flax.traverse_util.flatten_dict(jax.device_get(flax.core.unfreeze(params)))
  shape = config.resolved_axial_shape
  out = {}
  for key, path, transform in _weight_names(config):
    if path == ("lm_head", "bias") and path not in flat:
      out[key] = np.zeros((config.vocab_size,), np.float32)
      continue
    value = np.asarray(flat.pop(path), np.float32)
    if transform == "T":
      value = value.T
    elif transform.startswith("axial"):
      axis = int(transform[5:])
      value = value.reshape(tuple(s if a == axis else 1 for a, s in enumerate(shape))
                            + value.shape[-1:])
    out[key] = np.ascontiguousarray(value)
  if flat:
    raise ValueError(f"params have entries the config does not describe: "
                     f"{sorted('/'.join(p) for p in flat)}")
  return out


def read_hf_weights(hf_dir: str) -> Dict[str, np.ndarray]:
  """The state_dict in `hf_dir` as float32 numpy arrays (safetensors or PyTorch, sharded or not).

  safetensors files need the `safetensors` package, PyTorch files need `torch`.
  """
  found = [n for n in _WEIGHT_FILES if os.path.isfile(os.path.join(hf_dir, n))]
  if not found:
    raise FileNotFoundError(f"no weights in {hf_dir!r}: expected one of {_WEIGHT_FILES}")
  name = found[0]
  files = [name]
  if name.endswith(".index.json"):
    with open(os.path.join(hf_dir, name)) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  state_dict = {}
  for file in files:
    path = os.path.join(hf_dir, file)
    if file.endswith(".safetensors"):
      state_dict.update(_read_safetensors(path))
    else:
      state_dict.update(_read_torch(path))
  return state_dict


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
  try:
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"reading {path} needs the safetensors package: "
                      "pip install safetensors") from e
  with safe_open(path, framework="np") as f:
    return {k: np.asarray(f.get_tensor(k), np.float32) for k in f.keys()}


def _read_torch(path: str) -> Dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"reading {path} (a PyTorch checkpoint) needs torch: pip install "
                      "torch (or convert it to safetensors)") from e
  state_dict = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.detach().float().numpy() for k, v in state_dict.items()}


def from_hf(hf_dir: str) -> Tuple[ReformerLM, Any]:
  """Loads a transformers `ReformerModelWithLMHead` directory.

  Returns:
    `(model, params)`: a deterministic (evaluation) `ReformerLM`, and its params.
    `model.apply({'params': params}, tokens, mask, rngs={'hash': key})` gives the logits
    HF gives (with LSH layers, up to its random rotations: see `hf_rotations`); use
    `ReformerLM(model.config.replace(deterministic=False))` to train with dropout.
  """
  config = config_from_hf(read_hf_config(hf_dir))
  params = params_from_hf(read_hf_weights(hf_dir), config)
  return ReformerLM(config.replace(deterministic=True)), params


def from_hf_model(hf_model) -> Tuple[ReformerConfig, Any]:
  """`(config, params)` of an in-memory transformers `ReformerModelWithLMHead` (any dtype)."""
  config = config_from_hf(hf_model.config.to_dict())
  state_dict = {k: v.detach().float().cpu().numpy() for k, v in hf_model.state_dict().items()}
  return config, params_from_hf(state_dict, config)


def to_hf(config: ReformerConfig, params, hf_dir: str) -> None:
  """Writes `hf_dir/config.json` and `model.safetensors` for transformers' from_pretrained.

  transformers 5.x does not add `lm_head.bias` to the logits; if the bias is nonzero its
  logits then differ from ours by the bias (transformers 4.x adds it).
  """
  hf = hf_config_from(config)
  state_dict = params_to_hf(params, config)
  try:
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("writing model.safetensors needs the safetensors package: "
                      "pip install safetensors") from e
  os.makedirs(hf_dir, exist_ok=True)
  with open(os.path.join(hf_dir, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)
  save_file(state_dict, os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})


def hf_rotations(config: ReformerConfig, hash_seed: int, dtype: str = "float32") -> np.ndarray:
  """The LSH rotations HF draws with `config.hash_seed = hash_seed` (needs torch; CPU).

  HF reseeds before every hashing, so all LSH layers (and calls) use this one array: pass
  it as `ReformerLM(config).apply(..., lsh_rotations=R)`. `dtype` is the torch model's
  ("float64" after `.double()`): HF draws the rotations in it.

  Returns:
    `[n_heads, d_head, n_hashes, sum(n_buckets factors) // 2]` of `dtype`.
  """
  import torch  # pylint: disable=g-import-not-at-top
  if config.n_buckets is None:
    raise ValueError("config.n_buckets is None: HF picks num_buckets at its first forward "
                     "(from the length); replay HF's rotations with config.replace("
                     "n_buckets=hf_num_buckets(hf_config, length))")
  factors = config.n_buckets if isinstance(config.n_buckets, tuple) else (config.n_buckets,)
  generator = torch.Generator().manual_seed(hash_seed)
  shape = (config.n_heads, config.d_head, config.n_hashes, sum(factors) // 2)
  return torch.randn(shape, generator=generator, dtype=getattr(torch, dtype)).numpy()


def hf_num_buckets(hf: Mapping[str, Any], length: int) -> Union[int, Tuple[int, int]]:
  """The `num_buckets` HF's LSH layers use for a forward of `length` tokens.

  A set `hf['num_buckets']` is returned as is (factors as a tuple). None is what
  `LSHSelfAttention._set_num_buckets` picks at a layer's first forward, from `length`
  after HF's padding (`pad_like_hf`): the power of two at or below
  `2 * length // lsh_attn_chunk_length` (at least 2), factorised into two powers of two
  when it exceeds `2 * max(sqrt(max_position_embeddings // chunk), chunk)`.
  """
  hf = {**HF_DEFAULTS, **hf}
  if hf["num_buckets"] is not None:
    n_buckets = hf["num_buckets"]
    return tuple(n_buckets) if isinstance(n_buckets, list) else n_buckets
  chunk = hf["lsh_attn_chunk_length"]
  power = max(1, (2 * (length // chunk)).bit_length() - 1)
  limit = 2 * max(int((hf["max_position_embeddings"] // chunk) ** 0.5), chunk)
  if 2 ** power > limit:
    return (2 ** (power // 2), 2 ** (power - power // 2))
  return 2 ** power


def pad_like_hf(config: ReformerConfig, tokens: np.ndarray, mask: Optional[np.ndarray] = None
                ) -> Tuple[np.ndarray, np.ndarray]:
  """Pads a batch as transformers' ReformerModel pads it in evaluation.

  HF pads every input longer than the smallest chunk length to a multiple of the chunk
  lengths' least common multiple (masked padding at the end). reformer_jax pads each
  attention layer to its own chunk multiple instead; for LSH layers the two differ when
  the LCM exceeds the LSH chunk length, because the padding changes which sorted chunks
  the look-around reaches. Pad with this to compute exactly what HF computes, and slice
  the outputs back to the input length.

  Args:
    config: the model's config.
    tokens: `[batch, length]` token ids.
    mask: `[batch, length]`, True = real token; None = all real.

  Returns:
    `(tokens, mask)` padded to HF's length (mask bool, False on the padding).
  """
  tokens = np.asarray(tokens)
  batch, length = tokens.shape
  mask = np.ones((batch, length), bool) if mask is None else np.asarray(mask).astype(bool)
  chunks = [getattr(config, f"{kind}_chunk_len")
            for kind in sorted(set(config.layer_attention_types())) if kind in ("local", "lsh")]
  if not chunks or length <= min(chunks) or length % math.lcm(*chunks) == 0:
    return tokens, mask
  extra = -length % math.lcm(*chunks)
  return (np.pad(tokens, ((0, 0), (0, extra))),
          np.pad(mask, ((0, 0), (0, extra)), constant_values=False))


# ---------------------------------------------------------------------------------------
# Checking a conversion against transformers (needs torch and transformers).


def _hf_lsh_modules(hf_model):
  return [m for m in hf_model.modules() if type(m).__name__ == "LSHSelfAttention"]


@contextlib.contextmanager
def _hf_hashing_with(hf_model, hash_seed: int, train: bool):
  """HF in training (`train`) or eval mode with its LSH layers' `hash_seed` set;
  restores the seeds, the bucket counts (HF sets unset ones at a forward), the mode and
  (after training) clears the gradients on exit."""
  lsh = _hf_lsh_modules(hf_model)
  seeds = [m.hash_seed for m in lsh]
  buckets = [m.num_buckets for m in lsh]
  config_buckets = hf_model.config.num_buckets
  training = hf_model.training
  hf_model.train(train)
  try:
    for m in lsh:
      m.hash_seed = hash_seed
    yield
  finally:
    for m, seed, n_buckets in zip(lsh, seeds, buckets):
      m.hash_seed, m.num_buckets = seed, n_buckets
    hf_model.config.num_buckets = config_buckets
    if train:
      hf_model.zero_grad(set_to_none=True)
    hf_model.train(training)


def _replayed_rotations(config: ReformerConfig, hash_seed: int, hf_model, length: int):
  """`(config, rotations)`: `config` with the num_buckets HF uses for `length` tokens, and
  HF's LSH rotations for `hash_seed` as float32 (None without LSH layers)."""
  if "lsh" not in config.attention_types:
    return config, None
  padded = pad_like_hf(config, np.zeros((1, length), np.int32))[0].shape[1]
  config = config.replace(n_buckets=hf_num_buckets(hf_model.config.to_dict(), padded))
  return config, hf_rotations(config, hash_seed, _dtype_name(hf_model)).astype(np.float32)


def _unused_lm_head_bias(hf_model):
  """`lm_head.bias` if transformers' LM head does not add it to the logits (5.x), else None.

  transformers 4.x ties `lm_head.decoder.bias` to `lm_head.bias`; 5.x builds the decoder
  without a bias and never reads `lm_head.bias`.
  """
  if getattr(hf_model.lm_head.decoder, "bias", None) is None:
    return hf_model.lm_head.bias
  return None


def _dtype_name(hf_model) -> str:
  return str(next(hf_model.parameters()).dtype).replace("torch.", "")


def compare_with_hf(hf_model, tokens: np.ndarray, mask: Optional[np.ndarray] = None, *,
                    hash_seed: int = 0, hf_padding: bool = False) -> Dict[str, Any]:
  """Runs a transformers `ReformerModelWithLMHead` (eval mode) and its conversion.

  HF's LSH rotations are fixed by `hash_seed` (set on its LSH layers for this call) and
  replayed in ours; an unset `num_buckets` is the count HF picks for this length
  (`hf_num_buckets`; HF's pick is undone afterwards). When transformers does not add
  `lm_head.bias` (5.x), the HF logits are compared after adding it, since the converted
  model adds it.

  Run HF in float64 (`hf_model.double()`) to compare with its exact arithmetic: in
  float32 HF combines hash rounds as `exp(l - logsumexp(l))` with `l` about -1e5 (float32
  spacing 0.0078) for a query that sees only itself in every round (position 0 always),
  so its round weights there sum to 1 +- ~1%; ours (a max-subtracted softmax) sum to 1.

  Args:
    hf_model: the torch model (float32, CPU).
    tokens: `[batch, length]` token ids.
    mask: `[batch, length]`, 1/True = real token (HF's attention_mask); None = all real.
    hash_seed: seed of HF's rotations.
    hf_padding: feed ours the batch padded as HF pads it (`pad_like_hf`).

  Returns:
    {'hidden': max |difference| of the final hidden states (after the final layer norm),
     'logits': max |difference| of the logits, both over real positions;
     'hf_adds_lm_head_bias': whether transformers added lm_head.bias itself}.
  """
  import torch  # pylint: disable=g-import-not-at-top
  config, params = from_hf_model(hf_model)
  tokens = np.asarray(tokens)
  real = np.ones(tokens.shape, bool) if mask is None else np.asarray(mask).astype(bool)
  with _hf_hashing_with(hf_model, hash_seed, train=False), torch.no_grad():
    hf_mask = None if mask is None else torch.as_tensor(real.astype(np.int64))
    hidden = hf_model.reformer(torch.as_tensor(tokens, dtype=torch.long),
                               attention_mask=hf_mask).last_hidden_state
    logits = hf_model.lm_head(hidden)
    unused = _unused_lm_head_bias(hf_model)
    if unused is not None:
      logits = logits + unused
  config, rotations = _replayed_rotations(config, hash_seed, hf_model, tokens.shape[1])
  ours_tokens, ours_mask = tokens, None if mask is None else real
  if hf_padding:
    ours_tokens, ours_mask = pad_like_hf(config, tokens, ours_mask)
  ours_logits, ours_hidden = _forward_with_hidden(config, params, ours_tokens, ours_mask,
                                                  rotations)
  length = tokens.shape[1]
  ours_logits, ours_hidden = ours_logits[:, :length], ours_hidden[:, :length]
  diff = lambda a, b: float(np.max(np.abs(np.asarray(a) - b.numpy())[real]))
  return {"hidden": diff(ours_hidden, hidden), "logits": diff(ours_logits, logits),
          "hf_adds_lm_head_bias": unused is None}


def _forward_with_hidden(config, params, tokens, mask, rotations):
  """(logits, final hidden states) of the deterministic model."""
  return _jitted_forward(config.replace(deterministic=True))(
      params, jnp.asarray(tokens), None if mask is None else jnp.asarray(mask), rotations)


@functools.lru_cache(maxsize=16)
def _jitted_forward(config: ReformerConfig):
  """A jitted (params, tokens, mask, rotations) -> (logits, final hidden states)."""
  model = ReformerLM(config)

  @jax.jit
  def run(params, tokens, mask, rotations):
    logits, state = model.apply(
        {"params": params}, tokens, mask, lsh_rotations=rotations,
        mutable=["intermediates"])
    return logits, state["intermediates"]["final_hidden"][0]

  return run


def compare_gradients_with_hf(hf_model, tokens: np.ndarray, *,
                              hash_seed: int = 0) -> Dict[str, float]:
  """Gradients of the next-token loss under HF's reversible backward and under ours.

  HF runs in training mode (its own reversible backward pass) with every dropout
  probability 0; the loss is the mean cross-entropy of predicting `tokens[:, 1:]`.
  HF's training rules apply: the length must be a multiple of the chunk lengths' LCM
  (and equal prod(axial_pos_shape) with axial positions).

  Returns:
    {HF parameter name: max |ours - HF| / max |HF|} for every parameter, and
    'loss': |ours - HF|.
  """
  import torch  # pylint: disable=g-import-not-at-top
  hf = hf_model.config
  rates = {k: getattr(hf, k) for k in ("hidden_dropout_prob", "local_attention_probs_dropout_prob",
                                       "lsh_attention_probs_dropout_prob")}
  if any(rates.values()):
    raise ValueError(f"gradients are compared without dropout; set these to 0: {rates}")
  config, params = from_hf_model(hf_model)
  tokens = np.asarray(tokens)
  with _hf_hashing_with(hf_model, hash_seed, train=True):
    hf_model.zero_grad(set_to_none=True)
    ids = torch.as_tensor(tokens, dtype=torch.long)
    logits = hf_model(ids).logits
    unused = _unused_lm_head_bias(hf_model)
    if unused is not None:
      logits = logits + unused
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             ids[:, 1:].reshape(-1))
    loss.backward()
    hf_grads = {k: (np.zeros(tuple(p.shape), np.float32) if p.grad is None
                    else p.grad.detach().numpy().copy())
                for k, p in hf_model.named_parameters()}
    hf_loss = float(loss.detach())

  config, rotations = _replayed_rotations(config, hash_seed, hf_model, tokens.shape[1])
  model = ReformerLM(config.replace(deterministic=True))
  targets = np.roll(tokens, -1, axis=1)
  weights = np.ones(tokens.shape, np.float32)
  weights[:, -1] = 0.

  def loss_fn(params):
    sums = model.apply({"params": params}, jnp.asarray(tokens), targets=jnp.asarray(targets),
                       weights=jnp.asarray(weights), lsh_rotations=rotations)
    return sums["loss"] / sums["weight"]

  ours_loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  ours = dict(params_to_hf(grads, config))
  result = {}
  for key, g in hf_grads.items():
    scale = max(float(np.max(np.abs(g))), 1e-30)
    result[key] = float(np.max(np.abs(ours[key] - g))) / scale
  result["loss"] = abs(float(ours_loss) - hf_loss)
  return result


# ---------------------------------------------------------------------------------------
# Workdirs: a converted model as a checkpoint + config.gin for train / evaluate / sample.


# Registered under this module's name, which converted workdirs' config.gin use. Run as a
# program, this file executes twice (as __main__, and as reformer_jax.convert when a
# config.gin imports it); the function lives in reformer_jax.data, so both executions
# register the same function under the same name and gin sees one configurable.
gin.external_configurable(offset_tokens, "offset_tokens", module="reformer_jax.convert")


def default_seq_len(config: ReformerConfig, limit: int = 2048) -> int:
  """A length for evaluating a converted model.

  At most `limit` and the position table's size, and a multiple of the chunk lengths' LCM
  when possible, so that HF pads nothing and both compute the same LSH windows.
  """
  length = min(limit, max_length(config))
  chunks = [getattr(config, f"{kind}_chunk_len")
            for kind in set(config.layer_attention_types()) if kind in ("local", "lsh")]
  lcm = math.lcm(*chunks) if chunks else 1
  return length // lcm * lcm if length >= lcm else length


def workdir_config(config: ReformerConfig, *, seq_len: int, token_offset: int = 0,
                   data_file: Optional[str] = None, origin: str = "") -> str:
  """The text of a workdir's config.gin for a converted model.

  Macros SEQ_LEN, BATCH_SIZE, TRAIN_STEPS and N_HASHES can be rebound on the command line
  of `evaluate` / `sample` / `train`. The data is byte-level: `data_file` (`local_file`,
  e.g. enwik8) or the corpus shipped with the package, token ids shifted by `token_offset`.
  """
  lines = [f"# Converted by reformer_jax.convert{' from ' + origin if origin else ''}.",
           "# strict_causal = False reproduces Hugging Face's LSH attention windows.",
           f"# The converted weights fix vocab_size and the position table: SEQ_LEN <= "
           f"{max_length(config)}.", ""]
  if token_offset:
    lines += ["import reformer_jax.convert", ""]
  lines += [f"SEQ_LEN = {seq_len}", "BATCH_SIZE = 8", "TRAIN_STEPS = 1000",
            f"N_HASHES = {config.n_hashes}", "", "Experiment.model = @ReformerConfig()"]
  for field in dataclasses.fields(config):
    if field.name in ("dtype", "stream_dtype", "deterministic"):
      continue
    value = "%N_HASHES" if field.name == "n_hashes" else repr(getattr(config, field.name))
    lines.append(f"ReformerConfig.{field.name} = {value}")
  lines.append("")
  source = "@shipped_corpus" if data_file is None else "@local_file"
  if token_offset:
    name = "reformer_jax.convert.offset_tokens"
    lines += [f"Experiment.data = @{name}", f"{name}.source = {source}",
              f"{name}.offset = {token_offset}"]
  else:
    lines.append(f"Experiment.data = {source}")
  if data_file is not None:
    lines.append(f"local_file.path = {os.path.abspath(data_file)!r}")
  lines += ["Experiment.seq_len = %SEQ_LEN", "Experiment.batch_size = %BATCH_SIZE",
            "Experiment.train_steps = %TRAIN_STEPS", "Experiment.optimizer = @OptimizerConfig()",
            ""]
  return "\n".join(lines)


def _check_workdir_inputs(config: ReformerConfig, workdir: str, *,
                          seq_len: Optional[int] = None, token_offset: int = 0,
                          data_file: Optional[str] = None) -> None:
  """Raises ValueError (FileNotFoundError) for inputs `write_workdir` cannot use.

  Called before anything is written; the messages name the command-line flags.
  """
  checkpoints = os.path.join(workdir, "checkpoints")
  if os.path.isdir(checkpoints) and os.listdir(checkpoints):
    raise ValueError(f"{checkpoints} already holds checkpoints; convert into a new --workdir")
  if data_file is not None and not os.path.isfile(data_file):
    raise FileNotFoundError(f"--data_file {data_file!r} does not exist")
  if token_offset < 0:
    raise ValueError(f"--token_offset={token_offset}: the data's token ids are byte + "
                     "offset, so give an offset >= 0 (2 for google/reformer-enwik8, else 0)")
  limit = max_length(config)
  if seq_len is not None and not 1 <= seq_len <= limit:
    raise ValueError(f"--seq_len={seq_len}: the converted model's position table holds "
                     f"{limit} positions and the converted weights fix its size; give "
                     f"--seq_len between 1 and {limit} (default {default_seq_len(config)})")


def write_workdir(config: ReformerConfig, params, workdir: str, *, seq_len: Optional[int] = None,
                  token_offset: int = 0, data_file: Optional[str] = None,
                  origin: str = "") -> str:
  """Writes `workdir/config.gin` and a step-0 checkpoint holding `params`.

  The checkpoint is a full train state (fresh optimiser state), so `reformer_jax.train`
  fine-tunes from it and `evaluate` / `sample` read it as any training checkpoint.

  Returns:
    The path of the config.gin written.
  """
  # Imported here: checkpointing and the rest of the trainer are not needed to convert.
  # pylint: disable-next=g-import-not-at-top
  from reformer_jax.trainer import checkpointing, gin_setup, optim, sharding, steps
  _check_workdir_inputs(config, workdir, seq_len=seq_len, token_offset=token_offset,
                        data_file=data_file)
  seq_len = default_seq_len(config) if seq_len is None else seq_len
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.gin")
  pathlib.Path(path).write_text(workdir_config(config, seq_len=seq_len,
                                               token_offset=token_offset, data_file=data_file,
                                               origin=origin))
  gin_setup.parse([path])
  exp = gin_setup.make_experiment()
  if exp.model != config:
    raise AssertionError(f"{path} does not reproduce the config: {exp.model} != {config}")
  tx, _ = optim.make_optimizer(exp.optimizer, exp.train_steps)
  params = jax.tree.map(jnp.asarray, params)
  state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=tx.init(params), rng=steps.run_keys(exp.seed)[1])
  state = sharding.put(state, sharding.replicated(sharding.make_mesh()))
  checkpointer = checkpointing.Checkpointer(workdir, keep=exp.keep_checkpoints)
  checkpointer.save(state, force=True)
  checkpointer.close()
  return path


# ---------------------------------------------------------------------------------------
# Command line.

def _define_flags():
  """The command-line flags (defined only when run as a program)."""
  return dict(
      hf_dir=flags.DEFINE_string("hf_dir", None, "A transformers Reformer directory to "
                                 "import (config.json + model.safetensors or "
                                 "pytorch_model.bin)."),
      workdir=flags.DEFINE_string("workdir", None, "The reformer_jax workdir written "
                                  "(import) or read (export)."),
      to_hf_dir=flags.DEFINE_string("to_hf_dir", None, "Export the latest checkpoint of "
                                    "--workdir as a transformers directory here."),
      seq_len=flags.DEFINE_integer("seq_len", None, "SEQ_LEN of the written config.gin; "
                                   "default: <= 2048, a multiple of the chunk lengths' LCM."),
      token_offset=flags.DEFINE_integer("token_offset", 0, "Token id of byte b is b + offset "
                                        "in the data (2 for google/reformer-enwik8)."),
      data_file=flags.DEFINE_string("data_file", None, "Byte-level data of the written "
                                    "config.gin (local_file, e.g. enwik8); default: the "
                                    "corpus shipped with the package."),
      verify=flags.DEFINE_bool("verify", False, "Also run the transformers model (needs "
                               "torch and transformers) and print the largest output "
                               "differences."))


def import_hf(hf_dir: str, workdir: str, *, seq_len: Optional[int] = None,
              token_offset: int = 0, data_file: Optional[str] = None,
              verify: bool = False) -> Dict[str, Any]:
  """The CLI's import: `hf_dir` -> `workdir`. Returns the summary printed as JSON.

  The inputs are checked, and the model compared with transformers (`verify`), before
  anything is written.
  """
  hf = read_hf_config(hf_dir)
  config = config_from_hf(hf)
  params = params_from_hf(read_hf_weights(hf_dir), config)
  _check_workdir_inputs(config, workdir, seq_len=seq_len, token_offset=token_offset,
                        data_file=data_file)
  notes = []
  if hf.get("hash_seed") is not None:
    notes.append("hash_seed is ignored: rotations come from the 'hash' rng; replay HF's "
                 "with reformer_jax.convert.hf_rotations")
  if config.vocab_size < 256 + token_offset:
    notes.append(f"the model has {config.vocab_size} token ids but the written byte-level "
                 f"data needs {256 + token_offset} (256 bytes + --token_offset): evaluate, "
                 "sample and train refuse it; bind Experiment.data to a source whose ids "
                 f"are below {config.vocab_size} (the converted weights fix vocab_size)")
  verified = None
  if verify:
    from transformers import ReformerModelWithLMHead  # pylint: disable=g-import-not-at-top
    # float64: HF's float32 combination of hash rounds is off by up to ~1% at queries
    # that see only themselves (see compare_with_hf).
    hf_model = ReformerModelWithLMHead.from_pretrained(hf_dir).double()
    length = min(default_seq_len(config, limit=256), hf["max_position_embeddings"])
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, length))
    verified = compare_with_hf(hf_model, tokens)
  path = write_workdir(config, params, workdir, seq_len=seq_len, token_offset=token_offset,
                       data_file=data_file, origin=os.path.abspath(hf_dir))
  summary = {"workdir": workdir, "config": path,
             "params": int(sum(np.size(x) for x in jax.tree.leaves(params))),
             "attention_types": list(config.attention_types)}
  if notes:
    summary["notes"] = notes
  if verified is not None:
    summary["verify"] = verified
  return summary


def export_hf(workdir: str, hf_dir: str) -> Dict[str, Any]:
  """The CLI's export: latest checkpoint of `workdir` -> `hf_dir`."""
  from reformer_jax.trainer import cli  # pylint: disable=g-import-not-at-top
  exp, step, params, _ = cli.load_workdir(workdir, ())
  to_hf(exp.model, params, hf_dir)
  return {"hf_dir": hf_dir, "step": step}


def main(flag):
  """Runs the import or the export the flags ask for; prints a JSON summary."""
  from reformer_jax.trainer import cli  # pylint: disable=g-import-not-at-top
  workdir, hf_dir, to_hf_dir = (flag[k].value for k in ("workdir", "hf_dir", "to_hf_dir"))
  if not workdir:
    raise ValueError("--workdir is required: where the import goes, or what to export")
  if bool(hf_dir) == bool(to_hf_dir):
    raise ValueError("give exactly one of --hf_dir (import into --workdir) and --to_hf_dir "
                     "(export --workdir)")
  if hf_dir:
    summary = import_hf(hf_dir, workdir, seq_len=flag["seq_len"].value,
                        token_offset=flag["token_offset"].value,
                        data_file=flag["data_file"].value, verify=flag["verify"].value)
  else:
    summary = export_hf(workdir, to_hf_dir)
  cli.print_json(summary)


if __name__ == "__main__":
  from reformer_jax.trainer import cli as _cli  # pylint: disable=g-import-not-at-top
  _FLAGS = _define_flags()
  app.run(_cli.guarded(lambda: main(_FLAGS)))
