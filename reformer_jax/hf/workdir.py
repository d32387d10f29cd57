"""A converted model as a workdir: config.gin and a step-0 checkpoint for train / evaluate /
sample."""
import dataclasses
import math
import os
import pathlib
from typing import Optional

import gin
import jax
import jax.numpy as jnp

from reformer_jax.data.offset_bytes import offset_tokens
from reformer_jax.models import ReformerConfig
from reformer_jax.models.config import position_limit

# Registered under reformer_jax.convert, the name converted workdirs' config.gin use: their
# `import reformer_jax.convert` imports this package.
gin.external_configurable(offset_tokens, "offset_tokens", module="reformer_jax.convert")


def default_seq_len(config: ReformerConfig, limit: int = 2048) -> int:
  """A length for evaluating a converted model.

  At most `limit` and the position table's size, and a multiple of the chunk lengths' LCM
  when possible, so that HF pads nothing and both compute the same LSH windows.
  """
  length = min(limit, position_limit(config))
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
           f"{position_limit(config)}.", ""]
  if token_offset:
    lines += ["import reformer_jax.convert", ""]
  lines += [f"SEQ_LEN = {seq_len}", "BATCH_SIZE = 8", "TRAIN_STEPS = 1000",
            f"N_HASHES = {config.n_hashes}", "", "Experiment.model = @ReformerConfig()"]
  for field in dataclasses.fields(config):
    if field.name in ("dtype", "stream_dtype", "deterministic", "sequence_axis"):
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


def check_workdir_inputs(config: ReformerConfig, workdir: str, *,
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
  limit = position_limit(config)
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
  check_workdir_inputs(config, workdir, seq_len=seq_len, token_offset=token_offset,
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
  mesh = sharding.make_mesh(exp.mesh)
  state = sharding.put(state, steps.state_shardings(exp.model, tx, mesh, exp.task,
                                                    exp.mesh.rules))
  checkpointer = checkpointing.Checkpointer(workdir, keep=exp.keep_checkpoints)
  checkpointer.save(state, force=True)
  checkpointer.close()
  return path

