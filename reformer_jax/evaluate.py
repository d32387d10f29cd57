r"""Evaluates the latest checkpoint of a training workdir.

  python -m reformer_jax.evaluate --workdir=workdirs/quickstart \
      [--gin_bindings='N_HASHES=4'] [--split=test] [--predictions=FILE]
  python -m reformer_jax.evaluate --workdir=workdirs/quickstart --dry_run [--target=v5e:2x2]

Reads `workdir/config.gin`; bindings change evaluation-time settings (e.g.
N_HASHES, ReformerConfig.attention_types, Experiment.eval_batches), not the
task. The metrics are the task's (language model: loss, accuracy, bits per
byte; masked LM: masked-token accuracy; classification: accuracy, macro F1; span
QA: exact match, F1). `--predictions=FILE` (classification, span QA) writes one
JSON line per example, in order: its index and the task's `prediction` (a
classifier's predicted and true label, logits and probabilities; span QA's
predicted and true span); only once the whole evaluation has run. `--dry_run` compiles the
eval step without a checkpoint or data (for a TPU topology with `--target`,
`trainer/plan.py`) and prints its plan. The last line printed is a JSON object of the metrics.
"""
import json
import os
from typing import Optional, Sequence

from absl import app, flags

from reformer_jax.trainer import cli, plan, sharding, steps


def evaluate(workdir: str, gin_bindings: Sequence[str] = (), split: str = "eval",
             predictions: Optional[str] = None) -> dict:
  """Metrics of the latest checkpoint in `workdir` on `split`; with `predictions`, writes
  the per-example outputs there (JSONL)."""
  exp = cli.load_experiment(workdir, gin_bindings)
  if predictions is not None:
    if not exp.task.writes_predictions:
      raise ValueError(f"--predictions writes per-example outputs (a classifier's, a span-QA "
                       f"model's), but {workdir} holds {exp.task.description} "
                       f"(@{type(exp.task).__name__}()), which writes none; leave it out.")
    folder = os.path.dirname(os.path.abspath(predictions))
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"--predictions={predictions}: no directory {folder}; "
                              "create it first.")
  exp, step, params, mesh = cli.load_workdir(workdir, gin_bindings, exp)
  batch_size = exp.eval_batch_size or exp.batch_size
  sharding.check_batch(batch_size, mesh, "Experiment.eval_batch_size")
  examples = [] if predictions is not None else None
  metrics = steps.evaluate(
      steps.compile_eval_step(exp.model, mesh, exp.task, exp.mesh.rules), params,
      exp.make_data(), batch_size=batch_size, seq_len=exp.seq_len, n_batches=exp.eval_batches,
      seed=exp.seed, mesh=mesh, split=split, task=exp.task, examples=examples)
  if predictions is not None:
    write_predictions(predictions, [exp.task.prediction(e) for e in examples])
  hashing = "lsh" in exp.model.layer_attention_types()
  return {"step": step, "split": split, **exp.task.name_tag(),
          **({"n_hashes": exp.model.n_hashes} if hashing else {}),
          **{f"eval_{k}": v for k, v in metrics.items()}}


def write_predictions(path: str, records: Sequence[dict]):
  """One JSON line per record, with its index first; written whole or not at all."""
  with open(path + ".tmp", "w") as f:
    for i, record in enumerate(records):
      f.write(json.dumps({"index": i, **record}) + "\n")
  os.replace(path + ".tmp", path)


def define_flags():
  """The command line's flags (defined only when run as a program)."""
  flags.DEFINE_string("workdir", None, "A training workdir.")
  flags.DEFINE_multi_string(
      "gin_bindings", [], "Gin binding applied after workdir/config.gin, e.g. "
      "'N_HASHES=4' (repeatable).")
  flags.DEFINE_string("split", "eval", "Data split: 'eval' or 'test'.")
  flags.DEFINE_bool("dry_run", False, "Compile the eval step from workdir/config.gin without "
                    "running it (no checkpoint needed); print its memory and cost plan.")
  flags.DEFINE_string("target", None, "With --dry_run: plan for this TPU topology's chips "
                      "(e.g. v5e:2x2; needs the tpu-plan extra).")
  flags.DEFINE_string("predictions", None, "Classification and span QA: a JSONL file for "
                      "the per-example predictions (classification: label, predicted, "
                      "logits, probabilities; span QA: predicted and true span).")


def main():
  args = flags.FLAGS
  if not args.workdir:
    raise ValueError("--workdir is required (a directory written by "
                     "`python -m reformer_jax.train`).")
  if args.target and not args.dry_run:
    raise ValueError(f"--target={args.target} plans the eval step for TPU chips without "
                     "running it; add --dry_run.")
  if args.dry_run:
    cli.print_json(plan.plan_eval(cli.load_experiment(args.workdir, args.gin_bindings),
                                  args.target))
    return
  cli.print_json(evaluate(args.workdir, args.gin_bindings, args.split, args.predictions))


if __name__ == "__main__":
  define_flags()
  app.run(cli.guarded(main))
