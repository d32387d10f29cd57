"""HF state_dicts <-> reformer_jax params, and reading / writing transformers directories."""
import json
import math
import os
from typing import Any, Dict, List, Mapping, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax.hf.config import (LM, config_from_hf, hf_architecture, hf_config_from,
                                    hf_num_labels, read_hf_config)
from reformer_jax.models import (ReformerConfig, ReformerEncoder, ReformerForMaskedLM,
                                 ReformerForQuestionAnswering, ReformerForSequenceClassification,
                                 ReformerLM)
from reformer_jax.models.config import position_limit

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def _weight_names(config: ReformerConfig, architecture: str = LM
                  ) -> List[Tuple[str, Tuple[str, ...], str]]:
  """(HF state_dict key, our param path, transform) for every parameter of `architecture`.

  Transforms: 'T' (torch Linear `[out, in]` <-> Flax kernel `[in, out]`), 'axial{i}'
  (HF's broadcastable `[1, .., s_i, .., 1, d_i]` <-> `[s_i, d_i]`), '' (as is). A bare
  `ReformerModel`'s keys have no `reformer.` prefix.
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
            ("reformer.encoder.layer_norm.bias", ("final_norm", "bias"), "")]
  if architecture == "ReformerModel":
    return [(key[len("reformer."):], path, transform) for key, path, transform in names]
  return names + [(key, tuple(path), transform) for key, *path, transform in
                  _HEAD_WEIGHTS[architecture]]


# HF's head weights: (state_dict key, our param path..., transform) per architecture.
_HEAD_WEIGHTS = {
    LM: [("lm_head.decoder.weight", "lm_head", "kernel", "T"),
         ("lm_head.bias", "lm_head", "bias", "")],
    "ReformerForMaskedLM": [("lm_head.decoder.weight", "lm_head", "kernel", "T"),
                            ("lm_head.bias", "lm_head", "bias", "")],
    "ReformerForSequenceClassification": [
        (f"classifier.{layer}.{kind}", "classifier", layer, name, "T" if kind == "weight" else "")
        for layer in ("dense", "out_proj") for kind, name in (("weight", "kernel"),
                                                              ("bias", "bias"))],
    "ReformerForQuestionAnswering": [("qa_outputs.weight", "qa_outputs", "kernel", "T"),
                                     ("qa_outputs.bias", "qa_outputs", "bias", "")],
}


def flax_model(config: ReformerConfig, architecture: str = LM, num_labels: int = 2):
  """The reformer_jax module computing what the transformers `architecture` computes."""
  if architecture == LM:
    return ReformerLM(config)
  models = {"ReformerModel": ReformerEncoder, "ReformerForMaskedLM": ReformerForMaskedLM,
            "ReformerForQuestionAnswering": ReformerForQuestionAnswering}
  if architecture == "ReformerForSequenceClassification":
    return ReformerForSequenceClassification(config, num_labels=num_labels)
  return models[architecture](config)


def architecture_of(model) -> Tuple[str, int]:
  """`(transformers class name, num_labels)` of a reformer_jax model (`flax_model`'s inverse)."""
  if isinstance(model, ReformerForMaskedLM):
    return "ReformerForMaskedLM", 2
  names = {ReformerLM: LM, ReformerEncoder: "ReformerModel",
           ReformerForSequenceClassification: "ReformerForSequenceClassification",
           ReformerForQuestionAnswering: "ReformerForQuestionAnswering"}
  if type(model) not in names:
    raise ValueError(f"{type(model).__name__} has no transformers counterpart; export one of "
                     f"{sorted(m.__name__ for m in names)}")
  return names[type(model)], getattr(model, "num_labels", 2)


def abstract_params(config: ReformerConfig, architecture: str = LM, num_labels: int = 2):
  """ShapeDtypeStructs of `flax_model(config, ...)`'s parameters (nothing is computed)."""
  length = min(2 * max(config.local_chunk_len, config.lsh_chunk_len),
               position_limit(config) or math.inf)
  model = flax_model(config.replace(deterministic=True), architecture, num_labels)
  init = lambda: model.init({"params": jax.random.PRNGKey(0), "hash": jax.random.PRNGKey(1)},
                            jnp.zeros((1, length), jnp.int32))["params"]
  return jax.eval_shape(init)


def params_from_hf(state_dict: Mapping[str, np.ndarray], config: ReformerConfig,
                   architecture: str = LM, num_labels: int = 2):
  """reformer_jax params (nested dict of float32 numpy arrays) from an HF state_dict of
  `architecture` (`num_labels`: ReformerForSequenceClassification's classes).

  Accepts transformers 4.x checkpoints, whose LM head also stores the (tied)
  `lm_head.decoder.bias`. Raises ValueError naming missing, unexpected or misshaped weights.
  """
  state_dict = dict(state_dict)
  if architecture in (LM, "ReformerForMaskedLM") and "lm_head.decoder.weight" not in state_dict:
    what = ("a bare ReformerModel (no LM head)" if any(k.startswith("encoder.")
                                                        for k in state_dict) else
            "not a ReformerModelWithLMHead")
    raise ValueError(f"unsupported weights: lm_head.decoder.weight is missing ({what}); "
                     f"config.json's architectures must name the weights' class, not "
                     f"{architecture}")
  decoder_bias = state_dict.pop("lm_head.decoder.bias", None)
  if decoder_bias is not None:
    if "lm_head.bias" in state_dict and not np.array_equal(decoder_bias,
                                                           state_dict["lm_head.bias"]):
      raise ValueError("lm_head.bias and lm_head.decoder.bias differ; a transformers "
                       "checkpoint ties them, so this one is not understood")
    state_dict["lm_head.bias"] = decoder_bias
  shapes = flax.traverse_util.flatten_dict(abstract_params(config, architecture, num_labels))
  params, missing = {}, []
  for key, path, transform in _weight_names(config, architecture):
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


def params_to_hf(params, config: ReformerConfig, architecture: str = LM
                 ) -> Dict[str, np.ndarray]:
  """The transformers state_dict (float32 numpy) of reformer_jax `params` of `architecture`."""
  flat = flax.traverse_util.flatten_dict(jax.device_get(flax.core.unfreeze(params)))
  shape = config.resolved_axial_shape
  out = {}
  for key, path, transform in _weight_names(config, architecture):
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


def from_hf(hf_dir: str):
  """Loads a transformers Reformer directory of any class in `ARCHITECTURES`.

  Returns:
    `(model, params)`: a deterministic (evaluation) reformer_jax model of the class
    config.json names (`flax_model`: `ReformerLM` for ReformerModelWithLMHead), and its
    params. `model.apply({'params': params}, tokens, mask, rngs={'hash': key})` gives the
    outputs HF gives (with LSH layers, up to its random rotations: see `hf_rotations`); use
    `model.replace(config=model.config.replace(deterministic=False))` to train with dropout.
  """
  hf = read_hf_config(hf_dir)
  config, architecture, num_labels = config_from_hf(hf), hf_architecture(hf), hf_num_labels(hf)
  params = params_from_hf(read_hf_weights(hf_dir), config, architecture, num_labels)
  return flax_model(config.replace(deterministic=True), architecture, num_labels), params


def from_hf_model(hf_model) -> Tuple[ReformerConfig, Any]:
  """`(config, params)` of an in-memory transformers Reformer model (any dtype) of a class
  in `ARCHITECTURES`; `flax_model(config, type(hf_model).__name__, num_labels)` runs them."""
  hf = {**hf_model.config.to_dict(), "architectures": [type(hf_model).__name__]}
  config = config_from_hf(hf)
  state_dict = {k: v.detach().float().cpu().numpy() for k, v in hf_model.state_dict().items()}
  return config, params_from_hf(state_dict, config, hf_architecture(hf), hf_num_labels(hf))


def to_hf(config: ReformerConfig, params, hf_dir: str, architecture: str = LM) -> None:
  """Writes `hf_dir/config.json` and `model.safetensors` for transformers' from_pretrained
  (`architecture`: the class, see `architecture_of`; the classes of a classifier are read
  from its params).

  transformers 5.x does not add `lm_head.bias` to the logits; if the bias is nonzero its
  logits then differ from ours by the bias (transformers 4.x adds it).
  """
  num_labels = None
  if architecture == "ReformerForSequenceClassification":
    num_labels = int(np.shape(params["classifier"]["out_proj"]["bias"])[0])
  hf = hf_config_from(config, architecture, num_labels)
  state_dict = params_to_hf(params, config, architecture)
  try:
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("writing model.safetensors needs the safetensors package: "
                      "pip install safetensors") from e
  os.makedirs(hf_dir, exist_ok=True)
  with open(os.path.join(hf_dir, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)
  save_file(state_dict, os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})
