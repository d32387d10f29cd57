"""What the trainer trains: the task (gin: `Experiment.task`), a choice at the edge.

Each task is one module here, a `Task` (`task.py`: the protocol) that tells everything
about itself: its model, loss sums and metrics, the data sources it trains on and their
checks, its baselines, its transformers class, whether it generates text, and its
per-example predictions. The train and eval steps (`steps.py`), `train`, `evaluate`,
`sample` and `convert` ask the task and stay the same for every task:

  CausalLM        next-token language modelling (`ReformerLM`); the default.
  MaskedLM        BERT-style masked LM (`ReformerForMaskedLM`) on the LM sources.
  Classification  sequence classification (`ReformerForSequenceClassification`) on
                  `reformer_jax.data.ClassificationData`.
  SpanQA          extractive question answering (`ReformerForQuestionAnswering`) on
                  `reformer_jax.data.SpanData`.
  MQAR            multi-query associative recall: the causal LM scored on the answers of
                  `reformer_jax.data.MQARData`.

A new task is a module defining a `Task` subclass, its entry in `TASKS` (gin then knows
it as `@ClassName()`, and the data classes it claims are refused by the other tasks) and
a config that binds `Experiment.task`. A task kept outside the package trains as well
(`Experiment(task=...)` in Python).
"""
from reformer_jax.trainer.tasks.causal_lm import CausalLM
from reformer_jax.trainer.tasks.classification import Classification, macro_f1
from reformer_jax.trainer.tasks.masked_lm import MaskedLM
from reformer_jax.trainer.tasks.mqar import MQAR
from reformer_jax.trainer.tasks.span_qa import SpanQA, best_span
from reformer_jax.trainer.tasks.task import Baseline, Sums, Task

TASKS = (CausalLM, MaskedLM, Classification, SpanQA, MQAR)
"""The tasks gin registers by class name, and whose `data_types` claim data sources."""
