r"""Generates text from the latest checkpoint of a training workdir.

  python -m reformer_jax.sample --workdir=workdirs/quickstart \
      --prompt="HAMLET:" [--length=200 --temperature=0.8 --top_k=40 --top_p=0.95]
  python -m reformer_jax.sample --workdir=... --prompts_file=prompts.txt  # a batch
  python -m reformer_jax.sample --workdir=... --length=4096 --dry_run [--target=v5e:1x1]

Prints each prompt and its continuation (a batch: separated by `SEPARATOR` lines) on
stdout, and on stderr the tokens per second and the cache's memory. Decoding is cached
(`models/decoding.py`) unless `--no_cache`, or the model is not strictly causal (e.g. a
converted Hugging Face checkpoint) or the text outgrows its position table: then every
token re-runs the model, and stderr says why. `--dry_run` compiles the same generation
from workdir/config.gin without running it (no checkpoint needed) and prints its memory and
cost plan as one JSON line, for this machine or one TPU chip (`--target`, trainer/plan.py).
"""
import sys

from absl import app, flags

from reformer_jax.models.temperature_sampler import Sampling
from reformer_jax.trainer import cli, plan
from reformer_jax.trainer.sampling import cache_refusal, check_can_sample, generate_texts

SEPARATOR = "-" * 40


def define_flags():
  """The command line's flags (defined only when run as a program)."""
  flags.DEFINE_string("workdir", None, "A training workdir.")
  flags.DEFINE_string("prompt", "\n", "Text to continue.")
  flags.DEFINE_string("prompts_file", None, "A text file with one prompt per line, "
                      "generated as a batch (replaces --prompt).")
  flags.DEFINE_integer("length", 200, "Tokens to generate per prompt.")
  flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 = greedy.")
  flags.DEFINE_integer("top_k", 40, "Sample among the k likeliest tokens; 0 = all.")
  flags.DEFINE_float("top_p", 1.0, "Sample among the likeliest tokens whose probability "
                     "reaches top_p, in (0, 1]; 1 = all.")
  flags.DEFINE_integer("eos_id", None, "A token id that ends a sequence.")
  flags.DEFINE_integer("seed", 0, "Sampling (and hashing) seed.")
  flags.DEFINE_bool("no_cache", False, "Re-run the model for every token (no cache).")
  flags.DEFINE_bool("dry_run", False, "Compile the generation from workdir/config.gin without "
                    "running it (no checkpoint needed); print its memory and cost plan.")
  flags.DEFINE_string("target", None, "With --dry_run: plan for one chip of this TPU "
                      "generation (e.g. v5e:1x1; needs the tpu-plan extra).")
  flags.DEFINE_multi_string(
      "gin_bindings", [], "Gin binding applied after workdir/config.gin "
      "(repeatable).")


def _prompts(args):
  if args.prompts_file is None:
    return [args.prompt]
  with open(args.prompts_file, encoding="utf-8") as f:
    prompts = [line.rstrip("\n") for line in f]
  prompts = [p for p in prompts if p]
  if not prompts:
    raise ValueError(f"--prompts_file={args.prompts_file} holds no prompt; write one per "
                     "line")
  return prompts


def main():
  args = flags.FLAGS
  if not args.workdir:
    raise ValueError("--workdir is required (a directory written by "
                     "`python -m reformer_jax.train`).")
  if args.target and not args.dry_run:
    raise ValueError(f"--target={args.target} plans the generation for a TPU chip without "
                     "running it; add --dry_run.")
  prompts = _prompts(args)
  sampling = Sampling(args.temperature, args.top_k, args.top_p)  # fails before loading
  exp = cli.load_experiment(args.workdir, args.gin_bindings)
  if not exp.task.can_generate:
    raise ValueError(f"this workdir is {exp.task.description} "
                     f"(Experiment.task = @{type(exp.task).__name__}() in its config.gin), "
                     "not a causal language model: it cannot generate text. Score it with "
                     f"`python -m reformer_jax.evaluate --workdir={args.workdir}"
                     f"{' --predictions=FILE' if exp.task.writes_predictions else ''}`.")
  # Only the codec is used: no split needs to hold SEQ_LEN + 1 tokens (`make_data`'s check).
  data = exp.data()
  check_can_sample(data)
  longest = max(len(data.encode(p)) for p in prompts)
  use_cache = not args.no_cache
  if use_cache:
    why = cache_refusal(exp.model, longest + args.length)
    if why is not None:
      print(f"not using the cache: {why}", file=sys.stderr)
      use_cache = False
  if args.dry_run:
    cli.print_json(plan.plan_sample(exp, args.target, batch=len(prompts), prompt_len=longest,
                                    new_tokens=args.length, use_cache=use_cache,
                                    sampling=sampling))
    return
  exp, _, params, _ = cli.load_workdir(args.workdir, args.gin_bindings, exp)
  texts, run = generate_texts(exp.model, params, data, prompts, length=args.length,
                              temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, seed=args.seed, eos_id=args.eos_id,
                              use_cache=use_cache)
  print(f"\n{SEPARATOR}\n".join(p + t for p, t in zip(prompts, texts)), flush=True)
  cache = (f"cache {run.cache_bytes / 2 ** 20:.2f} MiB" if run.used_cache
           else "no cache")
  print(f"{run.new_tokens} tokens for {len(prompts)} prompt(s) in {run.seconds:.2f} s "
        f"({run.tokens_per_second:.1f} tokens/s; compiling {run.compile_seconds:.1f} s); "
        f"{cache}", file=sys.stderr)


if __name__ == "__main__":
  define_flags()
  app.run(cli.guarded(main))
