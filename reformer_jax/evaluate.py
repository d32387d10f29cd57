r"""Evaluates the latest checkpoint of a training workdir.

  python -m reformer_jax.evaluate --workdir=workdirs/quickstart \
      [--gin_bindings='N_HASHES=4'] [--split=test]

Reads `workdir/config.gin`; bindings change evaluation-time settings (e.g.
N_HASHES, ReformerConfig.attention_types, Experiment.eval_batches). The last
line printed is a JSON object of the metrics.
"""
from typing import Sequence

from absl import app, flags

from reformer_jax.trainer import cli, sharding, steps


def evaluate(workdir: str, gin_bindings: Sequence[str] = (),
             split: str = "eval") -> dict:
  """Metrics of the latest checkpoint in `workdir` on `split`."""
  exp, step, params, mesh = cli.load_workdir(workdir, gin_bindings)
  batch_size = exp.eval_batch_size or exp.batch_size
  sharding.check_batch(batch_size, mesh, "Experiment.eval_batch_size")
  metrics = steps.evaluate(
      steps.compile_eval_step(exp.model, mesh), params, exp.make_data(),
      batch_size=batch_size, seq_len=exp.seq_len, n_batches=exp.eval_batches,
      seed=exp.seed, mesh=mesh, split=split)
  hashing = "lsh" in exp.model.layer_attention_types()
  return {"step": step, "split": split,
          **({"n_hashes": exp.model.n_hashes} if hashing else {}),
          **{f"eval_{k}": v for k, v in metrics.items()}}


def define_flags():
  """The command line's flags (defined only when run as a program)."""
  flags.DEFINE_string("workdir", None, "A training workdir.")
  flags.DEFINE_multi_string(
      "gin_bindings", [], "Gin binding applied after workdir/config.gin, e.g. "
      "'N_HASHES=4' (repeatable).")
  flags.DEFINE_string("split", "eval", "Data split: 'eval' or 'test'.")


def main():
  args = flags.FLAGS
  if not args.workdir:
    raise ValueError("--workdir is required (a directory written by "
                     "`python -m reformer_jax.train`).")
  cli.print_json(evaluate(args.workdir, args.gin_bindings, args.split))


if __name__ == "__main__":
  define_flags()
  app.run(cli.guarded(main))
