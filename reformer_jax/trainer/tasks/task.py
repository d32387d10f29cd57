"""The task protocol: everything the trainer, `evaluate`, `sample` and `convert` need to
know about what is trained, told by the task itself.

A task is a frozen dataclass subclassing `Task` (its fields are its gin parameters). The
train and eval steps (`trainer/steps.py`) call its model and loss; `experiment.py` checks
the config and the data source against it; `train.py` logs its metrics and builds the run's
summary from them and its baselines; `evaluate` reports its metrics and writes its
per-example predictions; `sample` and `convert` ask whether it generates text and which
transformers class holds its model.
"""
import abc
import dataclasses
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from reformer_jax.models import ReformerConfig

Sums = Dict[str, jnp.ndarray]


@dataclasses.dataclass(frozen=True)
class Baseline:
  """The score of a model that ignores its input: `value` (None where the data gives
  none) and the console line that says so."""
  value: Optional[float]
  note: str = ""


class Task(abc.ABC):
  """What the trainer trains (gin: `Experiment.task = @Name()`).

  Class attributes:
    name: the task's name in reports and summaries, e.g. 'classification'.
    description: what a trained model is, in messages: 'a classifier'.
    bidirectional: whether it trains an encoder (`ReformerConfig.causal = False`).
    data_types: the data-source classes it trains on; () = any source whose class no
      task of `tasks.TASKS` claims (the language-modelling sources).
    data_kind: those sources in words, for errors: 'labelled data (listops, ...)'.
    hf_architecture: the transformers class its model converts to
      (`convert --to_hf_dir`); None: not exportable.
    can_generate: whether its model samples text (`sample`, `Experiment.sample_length`).
    writes_predictions: whether `evaluate --predictions` writes per-example outputs
      (`targets` and `prediction`).
    named_in_reports: whether summaries and `evaluate` carry {'task': name} (False for
      the causal LM only, whose reports predate tasks).

  Loss sums are {'loss', 'weight', 'correct'} (mean loss = loss / weight), summed over
  micro-batches, steps and eval batches; `eval_outputs` may add counts of its own.
  """
  name: ClassVar[str]
  description: ClassVar[str]
  bidirectional: ClassVar[bool] = False
  data_types: ClassVar[Tuple[type, ...]] = ()
  data_kind: ClassVar[str] = "language-modelling data"
  hf_architecture: ClassVar[Optional[str]] = None
  can_generate: ClassVar[bool] = False
  writes_predictions: ClassVar[bool] = False
  named_in_reports: ClassVar[bool] = True

  def check(self, config: ReformerConfig):
    """Raises ValueError if the task cannot train a model of `config` (default: a
    bidirectional task's config must not be causal)."""
    if self.bidirectional and config.causal:
      raise ValueError(f"Experiment.task = @{type(self).__name__}() trains a bidirectional "
                       "encoder but ReformerConfig.causal = True; set ReformerConfig.causal "
                       "= False.")

  @abc.abstractmethod
  def model(self, config: ReformerConfig) -> nn.Module:
    """The Flax model trained."""

  @abc.abstractmethod
  def loss_sums(self, model: nn.Module, params, batch: Mapping[str, jnp.ndarray],
                rngs: Mapping[str, Any], key) -> Sums:
    """{'loss', 'weight', 'correct'} sums of `model` on `batch` (the data source's arrays)
    with `rngs` ('dropout', 'hash'); `key`: the task's own randomness (e.g. masking)."""

  def eval_outputs(self, model: nn.Module, params, batch: Mapping[str, jnp.ndarray],
                   key) -> Tuple[Sums, Dict[str, jnp.ndarray]]:
    """(loss sums, per-example outputs `[batch, ...]`) of a deterministic `model`; `key`
    hashes. Default: the loss sums and no outputs."""
    return self.loss_sums(model, params, batch, {"hash": key}, key), {}

  @abc.abstractmethod
  def summarize(self, sums: Mapping[str, Any]) -> Dict[str, float]:
    """Metrics from summed host values (train: over the logged steps; eval: the split)."""

  @abc.abstractmethod
  def batch_shapes(self, leading: Tuple[int, ...], seq_len: int) -> Dict[str, Any]:
    """ShapeDtypeStructs of a batch with leading dims `leading` (the dry run's input)."""

  def check_data(self, data, config: ReformerConfig, seq_len: int,
                 names: Mapping[str, str]):
    """Raises ValueError if `data` (one of `data_types`) does not fit the task; `names`:
    the names the config sets parameters by (`gin_setup.written_names`)."""
    del data, config, seq_len, names

  def baselines(self, data) -> Dict[str, Baseline]:
    """{summary key: Baseline} of `data` (printed before training, in the summary)."""
    del data
    return {}

  def targets(self, batch: Mapping[str, Any], row: int) -> Dict[str, Any]:
    """The true targets of example `row` of `batch`, for `prediction`."""
    raise ValueError(f"{type(self).__name__} writes no predictions (writes_predictions "
                     "is False): evaluate without --predictions")

  def prediction(self, example: Mapping[str, Any]) -> Dict[str, Any]:
    """The JSON record of one eval example: its `targets` and `eval_outputs` rows."""
    raise ValueError(f"{type(self).__name__} writes no predictions (writes_predictions "
                     "is False): evaluate without --predictions")

  def name_tag(self) -> Dict[str, str]:
    """{'task': name} to lead a report with, or {} (`named_in_reports`)."""
    return {"task": self.name} if self.named_in_reports else {}

