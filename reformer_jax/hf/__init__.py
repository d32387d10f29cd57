"""Hugging Face transformers Reformer <-> reformer_jax: configs, weights and workdirs.

`from_hf(DIR)` returns `(model, params)` for a transformers directory (config.json +
model.safetensors, sharded safetensors, or a PyTorch pytorch_model.bin; `from_hf_model`
converts a torch model in memory) of any class in `ARCHITECTURES`: `ReformerLM` for
`ReformerModelWithLMHead`, and the bidirectional `ReformerEncoder`, `ReformerForMaskedLM`,
`ReformerForSequenceClassification`, `ReformerForQuestionAnswering` for the transformers
classes of the same names. `to_hf(config, params, DIR, architecture)` writes a directory
that the transformers class loads with `from_pretrained`, and `write_workdir` makes a
workdir (language models) that `reformer_jax.sample`, `.evaluate` and `.train`
(fine-tuning) use as is. The command line is `python -m reformer_jax.convert`.

An imported model computes what transformers computes: LSH attention uses Hugging Face's
chunk windows (`strict_causal=False`) and the LM head adds `lm_head.bias` (as
transformers 4.x did; 5.x keeps the parameter but no longer adds it, which changes no
logit while the bias is zero, its initial value, and drops a 4.x-trained bias). Settings
reformer_jax cannot reproduce (a causal encoder, regression or multi-label classification,
unknown attention types or activations) raise ValueError saying which.

`compare_with_hf` and `compare_gradients_with_hf` (language models),
`compare_encoder_with_hf` and `compare_encoder_gradients_with_hf` (encoders and their
heads) run a torch model and its conversion on the same batch (needs torch and transformers); LSH rotations are replayed from
`hash_seed` exactly as HF draws them (`hf_rotations`), with the bucket count HF uses
(`hf_num_buckets`).

  config     config.json <-> ReformerConfig (`config_from_hf`, `hf_config_from`).
  weights    state_dict <-> params, reading and writing directories (`from_hf`, `to_hf`).
  lsh        HF's rotations, bucket counts and padding, replayed.
  compare    outputs and gradients compared with transformers (language models).
  compare_encoders   the same for encoders and their heads.
  torch_run  what both share: HF's hash seed fixed, its unused LM-head bias, its gradients.
  workdir    a converted model as a train / evaluate / sample workdir.
"""
from reformer_jax.hf.compare import compare_gradients_with_hf, compare_with_hf
from reformer_jax.hf.compare_encoders import (compare_encoder_gradients_with_hf,
                                              compare_encoder_with_hf)
from reformer_jax.hf.config import (ARCHITECTURES, HF_ACTIVATIONS, HF_DEFAULTS, config_from_hf,
                                    hf_architecture, hf_config_from, hf_num_labels,
                                    read_hf_config)
from reformer_jax.hf.lsh import hf_num_buckets, hf_rotations, pad_like_hf
from reformer_jax.hf.weights import (abstract_params, architecture_of, flax_model, from_hf,
                                     from_hf_model, params_from_hf, params_to_hf,
                                     read_hf_weights, to_hf)
from reformer_jax.hf.workdir import (check_workdir_inputs, default_seq_len, workdir_config,
                                     write_workdir)

__all__ = ["ARCHITECTURES", "HF_ACTIVATIONS", "HF_DEFAULTS", "abstract_params",
           "architecture_of", "check_workdir_inputs", "compare_encoder_gradients_with_hf",
           "compare_encoder_with_hf", "compare_gradients_with_hf", "compare_with_hf",
           "config_from_hf", "default_seq_len", "flax_model", "from_hf", "from_hf_model",
           "hf_architecture", "hf_config_from", "hf_num_labels", "hf_num_buckets", "hf_rotations",
           "pad_like_hf", "params_from_hf", "params_to_hf", "read_hf_config", "read_hf_weights",
           "to_hf", "workdir_config", "write_workdir"]
