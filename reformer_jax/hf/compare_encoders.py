"""A transformers Reformer encoder (ReformerModel, ReformerForMaskedLM,
ReformerForSequenceClassification, ReformerForQuestionAnswering) and its conversion run on
one batch: outputs and head-loss gradients compared (needs torch and transformers).

LSH rotations are replayed from `hash_seed` (`torch_run.py`); run HF in float64
(`hf_model.double()`) for its exact arithmetic (see `compare_with_hf`).
"""
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax.hf.config import hf_num_labels
from reformer_jax.hf.lsh import pad_like_hf
from reformer_jax.hf.torch_run import (dropout_rates, fixed_hashing, hf_gradients,
                                       relative_errors, replayed_rotations,
                                       unused_lm_head_bias)
from reformer_jax.hf.weights import flax_model, from_hf_model, params_to_hf
from reformer_jax.models import ReformerEncoder

ENCODERS = ("ReformerModel", "ReformerForMaskedLM", "ReformerForSequenceClassification",
            "ReformerForQuestionAnswering")
_HEADS = ("lm_head", "classifier", "qa_outputs")


def _converted(hf_model):
  """`(architecture, config, params, flax model)` of a transformers encoder."""
  architecture = type(hf_model).__name__
  if architecture not in ENCODERS:
    raise ValueError(f"{architecture} is not one of {ENCODERS}; compare a "
                     "ReformerModelWithLMHead with compare_with_hf")
  config, params = from_hf_model(hf_model)
  num_labels = hf_num_labels(hf_model.config.to_dict())
  return architecture, config, params, num_labels


def _hf_outputs(hf_model, architecture, out) -> Dict[str, Any]:
  """HF's head outputs as numpy, the LM head's unused 5.x bias added."""
  if architecture == "ReformerForQuestionAnswering":
    return {"start_logits": out.start_logits, "end_logits": out.end_logits}
  if architecture == "ReformerModel":
    return {}
  logits = out.logits
  if architecture == "ReformerForMaskedLM":
    unused = unused_lm_head_bias(hf_model)
    if unused is not None:
      logits = logits + unused
  return {"logits": logits}


def compare_encoder_with_hf(hf_model, tokens: np.ndarray, mask: Optional[np.ndarray] = None,
                            *, hash_seed: int = 0, hf_padding: bool = False
                            ) -> Dict[str, float]:
  """Runs a transformers encoder (eval mode) and its conversion on `tokens` `[batch, length]`.

  Args as `compare_with_hf` (`mask`: HF's attention_mask; `hf_padding`: feed ours the
  batch padded as HF pads it, `pad_like_hf`).

  Returns:
    max |difference| over real positions of {'hidden': the final hidden states, and the
    head's outputs: 'logits' (masked LM: per position; classification: per example) or
    'start_logits' and 'end_logits'}.
  """
  import torch  # pylint: disable=g-import-not-at-top
  architecture, config, params, num_labels = _converted(hf_model)
  tokens = np.asarray(tokens)
  real = np.ones(tokens.shape, bool) if mask is None else np.asarray(mask).astype(bool)
  with fixed_hashing(hf_model, hash_seed, train=False), torch.no_grad():
    ids = torch.as_tensor(tokens, dtype=torch.long)
    hf_mask = None if mask is None else torch.as_tensor(real.astype(np.int64))
    body = hf_model if architecture == "ReformerModel" else hf_model.reformer
    hf_hidden = body(ids, attention_mask=hf_mask).last_hidden_state
    hf_out = _hf_outputs(hf_model, architecture, hf_model(ids, attention_mask=hf_mask))
  config, rotations = replayed_rotations(config, hash_seed, hf_model, tokens.shape[1])
  config = config.replace(deterministic=True)
  ours_tokens, ours_mask = tokens, None if mask is None else real
  if hf_padding:
    ours_tokens, ours_mask = pad_like_hf(config, tokens, ours_mask)
  ours_tokens = jnp.asarray(ours_tokens)
  ours_mask = None if ours_mask is None else jnp.asarray(ours_mask)
  body_params = {k: v for k, v in params.items() if k not in _HEADS}
  model = flax_model(config, architecture, num_labels)
  hidden, out = jax.jit(lambda p, b: (
      ReformerEncoder(config).apply({"params": b}, ours_tokens, ours_mask,
                                    lsh_rotations=rotations),
      model.apply({"params": p}, ours_tokens, ours_mask, lsh_rotations=rotations)))(
          params, body_params)
  length = tokens.shape[1]
  ours = {"hidden": hidden[:, :length]}
  if architecture == "ReformerForQuestionAnswering":
    ours.update(start_logits=out[0][:, :length], end_logits=out[1][:, :length])
  elif architecture == "ReformerForMaskedLM":
    ours["logits"] = out[:, :length]
  elif architecture == "ReformerForSequenceClassification":
    ours["logits"] = out
  hf_out["hidden"] = hf_hidden
  result = {}
  for name, value in ours.items():
    difference = np.abs(np.asarray(value) - hf_out[name].numpy())
    if difference.ndim > 1 and difference.shape[:2] == real.shape:
      difference = difference[real]
    result[name] = float(np.max(difference))
  return result


def compare_encoder_gradients_with_hf(hf_model, tokens: np.ndarray, *, labels=None,
                                      start_positions=None, end_positions=None,
                                      hash_seed: int = 0) -> Dict[str, float]:
  """Gradients of a head's loss under HF's reversible backward (training mode, every
  dropout 0) and under ours, for the transformers head model `hf_model`.

  Args:
    tokens: `[batch, length]`; HF's training rules apply (the length a multiple of the
      chunk lengths' LCM, and prod(axial_pos_shape) with axial positions).
    labels: ReformerForSequenceClassification: `[batch]` classes; ReformerForMaskedLM:
      `[batch, length]` target ids, -100 where not masked (HF's convention).
    start_positions, end_positions: ReformerForQuestionAnswering: `[batch]`, inside the
      length (ours weighs start and end positions alike, as HF's mean of the two).

  Returns:
    {HF parameter name: max |ours - HF| / scale} for every parameter, scale = max |HF| of
    the parameter, at least 1e-2 of the largest over all parameters (gradients that are
    zero in exact arithmetic are float32 rounding in ours: those of qa_outputs.bias and
    the final LayerNorm's bias under the span loss, whose softmax gradients sum to zero
    over the positions), and 'loss': |ours - HF|.
  """
  import torch  # pylint: disable=g-import-not-at-top
  hf = hf_model.config
  rates = dropout_rates(hf)
  if any(rates.values()) or getattr(hf, "classifier_dropout", None):
    raise ValueError(f"gradients are compared without dropout; set these to 0: {rates} "
                     "(and classifier_dropout)")
  architecture, config, params, num_labels = _converted(hf_model)
  if architecture == "ReformerModel":
    raise ValueError("ReformerModel has no head and no loss; compare one of its head models")
  tokens = np.asarray(tokens)
  as_torch = lambda x: None if x is None else torch.as_tensor(np.asarray(x), dtype=torch.long)
  with fixed_hashing(hf_model, hash_seed, train=True):
    hf_model.zero_grad(set_to_none=True)
    ids = torch.as_tensor(tokens, dtype=torch.long)
    if architecture == "ReformerForQuestionAnswering":
      loss = hf_model(ids, start_positions=as_torch(start_positions),
                      end_positions=as_torch(end_positions)).loss
    elif architecture == "ReformerForMaskedLM":
      logits = hf_model(ids).logits
      unused = unused_lm_head_bias(hf_model)
      if unused is not None:
        logits = logits + unused
      loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                               as_torch(labels).reshape(-1))
    else:
      loss = hf_model(ids, labels=as_torch(labels)).loss
    hf_loss, hf_grads = hf_gradients(hf_model, loss)

  config, rotations = replayed_rotations(config, hash_seed, hf_model, tokens.shape[1])
  model = flax_model(config.replace(deterministic=True), architecture, num_labels)
  if architecture == "ReformerForQuestionAnswering":
    kwargs = {"start_positions": jnp.asarray(start_positions),
              "end_positions": jnp.asarray(end_positions)}
  elif architecture == "ReformerForMaskedLM":
    labels = np.asarray(labels)
    kwargs = {"targets": jnp.asarray(np.where(labels < 0, 0, labels)),
              "weights": jnp.asarray((labels >= 0).astype(np.float32))}
  else:
    kwargs = {"labels": jnp.asarray(labels)}

  def loss_fn(params):
    sums = model.apply({"params": params}, jnp.asarray(tokens), lsh_rotations=rotations,
                       **kwargs)
    return sums["loss"] / sums["weight"]

  ours_loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  ours = dict(params_to_hf(grads, config, architecture))
  largest = max(float(np.max(np.abs(g))) for g in hf_grads.values())
  return {**relative_errors(ours, hf_grads, floor=1e-2 * largest),
          "loss": abs(float(ours_loss) - hf_loss)}
