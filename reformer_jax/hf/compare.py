"""A transformers model and its conversion run on one batch: outputs and gradients compared
(needs torch and transformers)."""
import functools
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax.hf.lsh import pad_like_hf
from reformer_jax.hf.torch_run import (dropout_rates, fixed_hashing, hf_gradients,
                                       relative_errors, replayed_rotations,
                                       unused_lm_head_bias)
from reformer_jax.hf.weights import from_hf_model, params_to_hf
from reformer_jax.models import ReformerConfig, ReformerLM


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
  with fixed_hashing(hf_model, hash_seed, train=False), torch.no_grad():
    hf_mask = None if mask is None else torch.as_tensor(real.astype(np.int64))
    hidden = hf_model.reformer(torch.as_tensor(tokens, dtype=torch.long),
                               attention_mask=hf_mask).last_hidden_state
    logits = hf_model.lm_head(hidden)
    unused = unused_lm_head_bias(hf_model)
    if unused is not None:
      logits = logits + unused
  config, rotations = replayed_rotations(config, hash_seed, hf_model, tokens.shape[1])
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
  rates = dropout_rates(hf)
  if any(rates.values()):
    raise ValueError(f"gradients are compared without dropout; set these to 0: {rates}")
  config, params = from_hf_model(hf_model)
  tokens = np.asarray(tokens)
  with fixed_hashing(hf_model, hash_seed, train=True):
    hf_model.zero_grad(set_to_none=True)
    ids = torch.as_tensor(tokens, dtype=torch.long)
    logits = hf_model(ids).logits
    unused = unused_lm_head_bias(hf_model)
    if unused is not None:
      logits = logits + unused
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             ids[:, 1:].reshape(-1))
    hf_loss, hf_grads = hf_gradients(hf_model, loss)

  config, rotations = replayed_rotations(config, hash_seed, hf_model, tokens.shape[1])
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
  return {**relative_errors(ours, hf_grads), "loss": abs(float(ours_loss) - hf_loss)}

