"""Running a transformers Reformer (torch) so that its conversion can repeat the same
computation: HF's LSH hash seed fixed (and its rotations replayed in ours), the LM-head bias
that transformers 5.x leaves out, the gradients of HF's own backward pass. Shared by
`compare.py` (language models) and `compare_encoders.py` (encoders and their heads)."""
import contextlib
from typing import Dict, Mapping

import numpy as np

from reformer_jax.hf.lsh import hf_num_buckets, hf_rotations, pad_like_hf
from reformer_jax.models import ReformerConfig


def _lsh_modules(hf_model):
  return [m for m in hf_model.modules() if type(m).__name__ == "LSHSelfAttention"]


@contextlib.contextmanager
def fixed_hashing(hf_model, hash_seed: int, train: bool):
  """HF in training (`train`) or eval mode with its LSH layers' `hash_seed` set;
  restores the seeds, the bucket counts (HF sets unset ones at a forward), the mode and
  (after training) clears the gradients on exit."""
  lsh = _lsh_modules(hf_model)
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


def replayed_rotations(config: ReformerConfig, hash_seed: int, hf_model, length: int):
  """`(config, rotations)`: `config` with the num_buckets HF uses for `length` tokens, and
  HF's LSH rotations for `hash_seed` as float32 (None without LSH layers)."""
  if "lsh" not in config.attention_types:
    return config, None
  padded = pad_like_hf(config, np.zeros((1, length), np.int32))[0].shape[1]
  config = config.replace(n_buckets=hf_num_buckets(hf_model.config.to_dict(), padded))
  return config, hf_rotations(config, hash_seed, _dtype_name(hf_model)).astype(np.float32)


def unused_lm_head_bias(hf_model):
  """`lm_head.bias` if transformers' LM head does not add it to the logits (5.x), else None.

  transformers 4.x ties `lm_head.decoder.bias` to `lm_head.bias`; 5.x builds the decoder
  without a bias and never reads `lm_head.bias`.
  """
  if getattr(hf_model.lm_head.decoder, "bias", None) is None:
    return hf_model.lm_head.bias
  return None


def hf_gradients(hf_model, loss):
  """`(loss, {name: gradient})` of `hf_model` after `loss.backward()` (zeros where unused)."""
  loss.backward()
  grads = {k: (np.zeros(tuple(p.shape), np.float32) if p.grad is None
               else p.grad.detach().numpy().copy())
           for k, p in hf_model.named_parameters()}
  return float(loss.detach()), grads


def dropout_rates(hf_config) -> Dict[str, float]:
  """HF's dropout probabilities of the body, which a gradient comparison needs at 0."""
  return {k: getattr(hf_config, k) for k in ("hidden_dropout_prob",
                                             "local_attention_probs_dropout_prob",
                                             "lsh_attention_probs_dropout_prob")}


def relative_errors(ours: Mapping[str, np.ndarray], hf_grads: Mapping[str, np.ndarray],
                    floor: float = 0.) -> Dict[str, float]:
  """{HF parameter name: max |ours - HF| / max(max |HF|, floor)} of each of HF's gradients
  (`ours`: our gradients under HF's names)."""
  return {key: float(np.max(np.abs(ours[key] - g))) /
          max(float(np.max(np.abs(g))), floor, 1e-30) for key, g in hf_grads.items()}


def _dtype_name(hf_model) -> str:
  return str(next(hf_model.parameters()).dtype).replace("torch.", "")
