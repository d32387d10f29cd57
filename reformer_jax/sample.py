r"""Generates text from the latest checkpoint of a training workdir.

  python -m reformer_jax.sample --workdir=workdirs/quickstart \
      --prompt="HAMLET:" [--length=200 --temperature=0.8 --top_k=40]

Prints the prompt and its continuation (see `trainer/sampling.py`).
"""
from absl import app, flags

from reformer_jax.trainer import cli
from reformer_jax.trainer.sampling import generate


def define_flags():
  """The command line's flags (defined only when run as a program)."""
  flags.DEFINE_string("workdir", None, "A training workdir.")
  flags.DEFINE_string("prompt", "\n", "Text to continue.")
  flags.DEFINE_integer("length", 200, "Tokens to generate.")
  flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 = greedy.")
  flags.DEFINE_integer("top_k", 40, "Sample among the k likeliest tokens; "
                       "0 = all.")
  flags.DEFINE_integer("seed", 0, "Sampling (and hashing) seed.")
  flags.DEFINE_multi_string(
      "gin_bindings", [], "Gin binding applied after workdir/config.gin "
      "(repeatable).")


def main():
  args = flags.FLAGS
  if not args.workdir:
    raise ValueError("--workdir is required (a directory written by "
                     "`python -m reformer_jax.train`).")
  exp, _, params, _ = cli.load_workdir(args.workdir, args.gin_bindings)
  text = generate(exp.model, params, exp.make_data(), args.prompt,
                  length=args.length, temperature=args.temperature,
                  top_k=args.top_k, seed=args.seed)
  print(args.prompt + text, flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(cli.guarded(main))
