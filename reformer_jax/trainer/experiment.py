"""What a run is: model, data, optimiser and loop settings, checked up front."""
import dataclasses
import math
from typing import Any, Callable, Mapping, Optional

from reformer_jax.data.duplication_task import DuplicationTask
from reformer_jax.models.config import ReformerConfig, position_limit
from reformer_jax.trainer.optim import OptimizerConfig
from reformer_jax.trainer.sharding import MeshConfig
from reformer_jax.trainer.tasks import TASKS, CausalLM, Task


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
  """One training run (gin: `Experiment.*`).

  Attributes:
    model: the ReformerConfig.
    data: a () -> data source callable (gin: `@shipped_corpus`, no
      parentheses), built by `make_data()` only when batches are needed (not
      by a dry run). A source (`reformer_jax.data`) has vocab_size,
      train_batch(step, batch_size, seq_len), eval_batches(batch_size,
      seq_len, n_batches), encode(str) and decode(tokens).
    optimizer: the OptimizerConfig.
    seq_len: tokens per example.
    batch_size: examples per update (split into `grad_accum_steps` micro-batches).
    train_steps: number of updates.
    grad_accum_steps: micro-batches whose gradients are summed per update.
    seed: seed of the parameters, dropout and hashing (the data has its own).
    log_every: steps between train-metric lines.
    eval_every: steps between evaluations (and one at the end).
    eval_batches: batches per evaluation; None scores the whole eval split.
    eval_batch_size: examples per eval batch; None = batch_size.
    checkpoint_every: steps between checkpoints (and one at the end).
    keep_checkpoints: how many recent checkpoints to keep.
    sample_prompt: printed with a continuation of `sample_length` tokens at the
      end of training (`sample_length` 0: no sample).
    sample_length: tokens to sample at the end of training.
    max_consecutive_nonfinite: the run stops with an error after this many
      consecutive steps with a non-finite loss or gradient (each is skipped:
      params and optimiser state stay as they were).
    task: what is trained, a `tasks.Task`: @CausalLM() (the default), @MaskedLM(),
      @Classification() (with a classification data source such as @listops) or @SpanQA()
      (with @span_qa_files).
    mesh: the device mesh and the rules that place the parameters on it, a
      `sharding.MeshConfig` (default: every device on `data`).
    init_from: the workdir of another run whose latest checkpoint's parameters start this
      one (a curriculum: train short, continue longer); the step, optimiser state and rng
      start afresh. Used only while this workdir has no checkpoint of its own (a rerun
      resumes). The parameters must have this model's shapes (bindings that keep them:
      SEQ_LEN within the position table, N_HASHES, lsh <-> shared_qk_full, chunk sizes).
  """
  model: ReformerConfig
  data: Callable[[], Any]
  optimizer: OptimizerConfig = OptimizerConfig()
  seq_len: int = 1024
  batch_size: int = 8
  train_steps: int = 1000
  grad_accum_steps: int = 1
  seed: int = 0
  log_every: int = 50
  eval_every: int = 500
  eval_batches: Optional[int] = 8
  eval_batch_size: Optional[int] = None
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  sample_prompt: str = ""
  sample_length: int = 0
  max_consecutive_nonfinite: int = 10
  task: Any = CausalLM()
  mesh: MeshConfig = MeshConfig()
  init_from: Optional[str] = None

  def __post_init__(self):
    if not isinstance(self.model, ReformerConfig):
      raise ValueError(f"Experiment.model must be a ReformerConfig, got {self.model!r}; "
                       "bind it as @ReformerConfig() (with parentheses).")
    if not isinstance(self.optimizer, OptimizerConfig):
      raise ValueError(f"Experiment.optimizer must be an OptimizerConfig, got "
                       f"{self.optimizer!r}; bind it as @OptimizerConfig().")
    if not callable(self.data) or hasattr(self.data, "train_batch"):
      raise ValueError(f"Experiment.data must be a data source's factory, got "
                       f"{self.data!r}; bind it without parentheses, e.g. "
                       "Experiment.data = @shipped_corpus (built only when needed).")
    for name in ("seq_len", "batch_size", "train_steps", "grad_accum_steps",
                 "log_every", "eval_every", "checkpoint_every",
                 "keep_checkpoints", "max_consecutive_nonfinite"):
      value = getattr(self, name)
      if not _is_int(value) or value < 1:
        raise ValueError(f"Experiment.{name} must be a positive int, got "
                         f"{value!r}.")
    for name in ("eval_batches", "eval_batch_size"):
      value = getattr(self, name)
      if value is not None and (not _is_int(value) or value < 1):
        raise ValueError(f"Experiment.{name} must be a positive int or None, got "
                         f"{value!r}.")
    if not _is_int(self.seed):
      raise ValueError(f"Experiment.seed must be an int, got {self.seed!r}.")
    if not _is_int(self.sample_length) or self.sample_length < 0:
      raise ValueError(f"Experiment.sample_length must be an int >= 0 (0: no sample), "
                       f"got {self.sample_length!r}.")
    if not isinstance(self.sample_prompt, str):
      raise ValueError(f"Experiment.sample_prompt must be a string, got "
                       f"{self.sample_prompt!r}.")
    if self.batch_size % self.grad_accum_steps:
      raise ValueError(
          f"BATCH_SIZE={self.batch_size} must be a multiple of "
          f"Experiment.grad_accum_steps={self.grad_accum_steps}.")
    if not isinstance(self.task, Task):
      raise ValueError(f"Experiment.task must be one of "
                       f"{', '.join(f'@{t.__name__}()' for t in TASKS)}, got {self.task!r}.")
    self.task.check(self.model)
    if not isinstance(self.mesh, MeshConfig):
      raise ValueError(f"Experiment.mesh must be a MeshConfig, got {self.mesh!r}; bind it as "
                       "@MeshConfig() (with parentheses).")
    if self.sample_length and not self.task.can_generate:
      raise ValueError(f"Experiment.sample_length={self.sample_length} samples text after "
                       f"training, but Experiment.task = @{type(self.task).__name__}() "
                       f"trains {self.task.description}, which cannot generate text; set "
                       "Experiment.sample_length = 0.")
    if self.init_from is not None and (not isinstance(self.init_from, str)
                                       or not self.init_from):
      raise ValueError(f"Experiment.init_from must be the workdir of a trained run (a "
                       f"string) or None, got {self.init_from!r}.")
    check_length(self.model, self.seq_len)

  def make_data(self, names: Optional[Mapping[str, str]] = None):
    """Builds the data source and checks it fits the run (`check_data`)."""
    data = self.data()
    check_data(self, data, names)
    return data

  @property
  def micro_batch_size(self) -> int:
    return self.batch_size // self.grad_accum_steps

  @property
  def eval_config(self) -> ReformerConfig:
    return self.model.replace(deterministic=True)


def check_data(exp: Experiment, data, names: Optional[Mapping[str, str]] = None):
  """Raises ValueError if the data source `data` does not fit `exp`: its vocabulary, the
  duplication task's one length and bounded evaluation, a language-modelling split
  shorter than SEQ_LEN + 1 tokens.

  `names`: {'Experiment.seq_len': 'SEQ_LEN', ...}, the names the config sets parameters by
  (gin_setup.written_names); the errors use them.
  """
  names = names or {}
  name = lambda target: names.get(target, target)
  seq_len = f"{name('Experiment.seq_len')}={exp.seq_len}"
  check_task_data(exp.task, exp.model, exp.seq_len, data, names)
  if data.vocab_size > exp.model.vocab_size:
    raise ValueError(
        f"the data has {data.vocab_size} token ids but the model's "
        f"vocab_size is {exp.model.vocab_size}; for a new model set "
        f"ReformerConfig.vocab_size >= {data.vocab_size}. A trained (or "
        f"converted) model's vocabulary is fixed by its checkpoint: use data "
        f"whose ids are below {exp.model.vocab_size}, such as the data it was "
        f"trained with.")
  if isinstance(data, DuplicationTask):
    n_symbols = name("duplication.n_symbols")
    if exp.seq_len != data.seq_len:
      fit = (f" or {n_symbols}={exp.seq_len // 2 - 1}"
             if exp.seq_len % 2 == 0 and exp.seq_len >= 4 else "")
      raise ValueError(
          f"{seq_len} does not fit the duplication task: its sequences `0 w 0 w` have "
          f"length 2 * {n_symbols} + 2 = {data.seq_len} ({n_symbols}={data.n_symbols}); "
          f"set {name('Experiment.seq_len')}={data.seq_len}{fit}.")
    if exp.eval_batches is None:
      raise ValueError(
          f"{name('Experiment.eval_batches')}=None scores a whole eval split, but the "
          "duplication task is unbounded: give a number of batches, e.g. 4.")
  for split in ("train", "eval") if isinstance(getattr(data, "splits", None), dict) else ():
    source = getattr(exp.data, "__name__", "the data source")
    if split not in data.splits:
      raise ValueError(f"{source} has no {split!r} split (it has {sorted(data.splits)}); "
                       f"training needs 'train' and evaluation 'eval'.")
    n = len(data.splits[split])
    if n < exp.seq_len + 1:
      raise ValueError(
          f"{seq_len} needs {exp.seq_len + 1} tokens per example, but the {split!r} split "
          f"of {source} has {n}: use {name('Experiment.seq_len')} <= {max(n - 1, 1)}, or "
          f"give that split more data.")


def check_task_data(task: Task, config: ReformerConfig, seq_len: int, data,
                    names: Mapping[str, str]):
  """Raises ValueError if `data` is not the kind of data `task` trains on (its
  `data_types`; a class that another task of `TASKS` claims is refused), or does not fit
  it (`task.check_data`)."""
  kind = type(data).__name__
  if task.data_types and not isinstance(data, task.data_types):
    raise ValueError(f"Experiment.task = @{type(task).__name__}() needs {task.data_kind}, "
                     f"got {kind}; set Experiment.data, or Experiment.task = "
                     f"@{CausalLM.__name__}().")
  owner = next((t for t in TASKS if t.data_types and isinstance(data, t.data_types)), None)
  if owner is not None and not isinstance(data, task.data_types):
    raise ValueError(f"{kind} is {owner.data_kind} but Experiment.task = "
                     f"@{type(task).__name__}(); set Experiment.task = @{owner.__name__}().")
  task.check_data(data, config, seq_len, names)


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def check_length(config: ReformerConfig, seq_len: int):
  """Rejects a SEQ_LEN beyond the position table, naming the valid lengths."""
  limit = position_limit(config)
  if limit is None or seq_len <= limit:
    return
  if config.positional == "axial":
    bits = math.ceil(math.log2(seq_len))
    fit = (2 ** (bits // 2), 2 ** (bits - bits // 2))
    raise ValueError(
        f"SEQ_LEN={seq_len} does not fit the axial position table "
        f"{config.resolved_axial_shape}: valid lengths are 1..{limit}. Use "
        f"SEQ_LEN <= {limit}, or, for a new model, bind "
        f"ReformerConfig.axial_shape=(...) with a product >= {seq_len}, e.g. "
        f"{fit} (or None with ReformerConfig.max_len={seq_len}); a trained "
        f"model's table is fixed by its checkpoint.")
  raise ValueError(
      f"SEQ_LEN={seq_len} exceeds the learned position table: valid lengths "
      f"are 1..{limit}; use SEQ_LEN <= {limit} or, for a new model, bind "
      f"ReformerConfig.max_len={seq_len} (a trained model's table is fixed by "
      f"its checkpoint).")


def padding_note(config: ReformerConfig, seq_len: int) -> Optional[str]:
  """Says how the attention layers pad SEQ_LEN, when it is not a chunk multiple."""
  chunks = {}
  for kind in set(config.layer_attention_types()):
    if kind in ("local", "lsh"):
      chunks[kind] = getattr(config, f"{kind}_chunk_len")
  notes = [f"{kind} attention pads it to {-(-seq_len // c) * c} "
           f"(chunk {c})" for kind, c in sorted(chunks.items())
           if seq_len > c and seq_len % c]
  if not notes:
    return None
  return (f"note: SEQ_LEN={seq_len} is not a multiple of the chunk length; "
          + "; ".join(notes) + " and masks the padding.")
