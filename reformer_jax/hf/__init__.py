"""Hugging Face transformers Reformer <-> reformer_jax: configs, weights and workdirs.

`from_hf(DIR)` returns `(ReformerLM, params)` for a `ReformerModelWithLMHead` directory
(config.json + model.safetensors, sharded safetensors, or a PyTorch pytorch_model.bin;
`from_hf_model` converts a torch model in memory), `to_hf(config, params, DIR)` writes a
directory that `ReformerModelWithLMHead.from_pretrained` loads, and `write_workdir` makes a
workdir that `reformer_jax.sample`, `.evaluate` and `.train` (fine-tuning) use as is. The
command line is `python -m reformer_jax.convert`.

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

  config     config.json <-> ReformerConfig (`config_from_hf`, `hf_config_from`).
  weights    state_dict <-> params, reading and writing directories (`from_hf`, `to_hf`).
  lsh        HF's rotations, bucket counts and padding, replayed.
  compare    outputs and gradients compared with transformers.
  workdir    a converted model as a train / evaluate / sample workdir.
"""
from reformer_jax.hf.compare import compare_gradients_with_hf, compare_with_hf
from reformer_jax.hf.config import (HF_ACTIVATIONS, HF_DEFAULTS, config_from_hf, hf_config_from,
                                    read_hf_config)
from reformer_jax.hf.lsh import hf_num_buckets, hf_rotations, pad_like_hf
from reformer_jax.hf.weights import (abstract_params, from_hf, from_hf_model, params_from_hf,
                                     params_to_hf, read_hf_weights, to_hf)
from reformer_jax.hf.workdir import (check_workdir_inputs, default_seq_len, workdir_config,
                                     write_workdir)

__all__ = ["HF_ACTIVATIONS", "HF_DEFAULTS", "abstract_params", "check_workdir_inputs",
           "compare_gradients_with_hf", "compare_with_hf", "config_from_hf", "default_seq_len",
           "from_hf", "from_hf_model", "hf_config_from", "hf_num_buckets", "hf_rotations",
           "pad_like_hf", "params_from_hf", "params_to_hf", "read_hf_config", "read_hf_weights",
           "to_hf", "workdir_config", "write_workdir"]
