"""HF state_dicts <-> reformer_jax params, and reading / writing transformers directories."""
import json
import os
from typing import Any, Dict, List, Mapping, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax.hf.config import config_from_hf, hf_config_from, read_hf_config
from reformer_jax.models import ReformerConfig, ReformerLM

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


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

