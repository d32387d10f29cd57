r"""Imports a Hugging Face Reformer as a reformer_jax workdir, or exports one.

Import a transformers `ReformerModelWithLMHead` directory (config.json + model.safetensors,
sharded safetensors, or a PyTorch pytorch_model.bin) as a workdir that
`reformer_jax.sample`, `.evaluate` and `.train` (fine-tuning) use as is:

  python -m reformer_jax.convert --hf_dir=DIR --workdir=OUT [--seq_len=4096] \
      [--token_offset=2] [--data_file=enwik8] [--verify]

Any transformers Reformer class that converts (also ReformerModel, ReformerForMaskedLM,
ReformerForSequenceClassification, ReformerForQuestionAnswering, which load in Python with
`reformer_jax.hf.from_hf`) is checked against transformers without writing anything by

  python -m reformer_jax.convert --hf_dir=DIR --verify

or export a workdir's latest checkpoint as a transformers directory:

  python -m reformer_jax.convert --workdir=OUT --to_hf_dir=DIR

The conversion itself is `reformer_jax.hf` (its names are importable from here too:
`from_hf`, `to_hf`, `compare_with_hf`, ...).
"""
import os
from typing import Any, Dict, Optional

import jax
import numpy as np
from absl import app, flags

# The library's names, importable from here as before the split into reformer_jax.hf.
from reformer_jax.data.offset_bytes import offset_tokens  # noqa: F401
from reformer_jax.hf import *  # noqa: F401,F403  pylint: disable=wildcard-import
from reformer_jax.hf import (check_workdir_inputs, compare_encoder_with_hf, compare_with_hf,
                             config_from_hf, default_seq_len, hf_architecture, params_from_hf,
                             read_hf_config, read_hf_weights, to_hf, write_workdir)
from reformer_jax.hf.config import LM


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
  architecture = hf_architecture(hf)
  if architecture != LM:
    raise ValueError(f"{hf_dir} holds a {architecture}; workdirs hold language models "
                     "(ReformerModelWithLMHead) only: load it in Python with "
                     "reformer_jax.hf.from_hf, and check it with `python -m "
                     "reformer_jax.convert --hf_dir=DIR --verify` (no --workdir)")
  params = params_from_hf(read_hf_weights(hf_dir), config)
  check_workdir_inputs(config, workdir, seq_len=seq_len, token_offset=token_offset,
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
  verified = verify_hf(hf_dir) if verify else None
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


def verify_hf(hf_dir: str) -> Dict[str, float]:
  """Runs the transformers model in `hf_dir` (float64) and its conversion on two random
  sequences; returns the largest output differences (`compare_with_hf` for the LM,
  `compare_encoder_with_hf` for the other classes). Needs torch and transformers."""
  import transformers  # pylint: disable=g-import-not-at-top
  hf = read_hf_config(hf_dir)
  config, architecture = config_from_hf(hf), hf_architecture(hf)
  # float64: HF's float32 combination of hash rounds is off by up to ~1% at queries
  # that see only themselves (see compare_with_hf).
  hf_model = getattr(transformers, architecture).from_pretrained(hf_dir).double()
  length = min(default_seq_len(config, limit=256), hf["max_position_embeddings"])
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, length))
  if architecture == LM:
    return compare_with_hf(hf_model, tokens)
  return {"architecture": architecture, **compare_encoder_with_hf(hf_model, tokens)}


def export_hf(workdir: str, hf_dir: str) -> Dict[str, Any]:
  """The CLI's export: latest checkpoint of `workdir` -> `hf_dir`."""
  from reformer_jax.trainer import cli  # pylint: disable=g-import-not-at-top
  exp, step, params, _ = cli.load_workdir(workdir, ())
  architecture = exp.task.hf_architecture
  if architecture is None:
    raise ValueError(f"{workdir} holds {exp.task.description} (Experiment.task = "
                     f"@{type(exp.task).__name__}()), which has no transformers class to "
                     "export to")
  to_hf(exp.model, params, hf_dir, architecture)
  return {"hf_dir": hf_dir, "step": step, "architecture": architecture}


def main(flag):
  """Runs the import or the export the flags ask for; prints a JSON summary."""
  from reformer_jax.trainer import cli  # pylint: disable=g-import-not-at-top
  workdir, hf_dir, to_hf_dir = (flag[k].value for k in ("workdir", "hf_dir", "to_hf_dir"))
  if hf_dir and not workdir and not to_hf_dir and flag["verify"].value:
    cli.print_json({"verify": verify_hf(hf_dir)})
    return
  if not workdir:
    raise ValueError("--workdir is required: where the import goes, or what to export "
                     "(or give --hf_dir with --verify alone to only check a conversion)")
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
