r"""Long-range recall (MQAR) against sequence length: full, local and LSH attention.

Each variant of the same 2-layer model of width 64 (`configs/mqar.gin`) is trained by the
trainer (`reformer_jax.train.run`) on multi-query associative recall (`reformer_jax.data.mqar`,
Zoology's rules) at each length, number of key-value pairs and seed, for the same number of
steps and about the same tokens per step (batch = tokens_per_step // length, at least 1).
Per run: the eval accuracy on the answers, the LSH models also evaluated with 8 rounds, the
step time (compilation and evaluations left out), and the compiled memory of the train step
(the trainer's dry run, XLA's memory analysis: argument + temp + output - alias), once per
variant and length. A variant whose compiled step needs more than --max_train_gib is not
trained: its memory is reported and its accuracy left out ("does not fit"); --memory_only
compiles every variant and trains none.

Queries are placed uniformly after the pairs by default (`--power_a 1.0`), so that a query's
key lies anywhere in the sequence; Zoology's anchor uses its power law (`--power_a 0.01`):

  python -m experiments.recall --variants full --lengths 512 --pairs 64 --seeds 0 \
      --power_a 0.01 --out experiments/results/recall_anchor          # Zoology's anchor
  python -m experiments.recall                                        # the whole study
  python -m experiments.recall --quick                                # tiny, seconds

A curriculum trains short and continues longer: `--init_from` starts every run from another
run's parameters (`Experiment.init_from`; the position table must not grow with the length:
bind `ReformerConfig.max_len` to the longest length in every stage), and `--eval_lengths`
also scores each trained model at other lengths (docs/lsh_vs_full.md#long-range-recall-mqar
has the stages that were run).

Writes `<out>/recall.{json,md,png}`; workdirs go to `<workdir_root>/<length>/<pairs>/<seed>/
<variant>` and are replaced on every run.
"""
import argparse
import os
import pathlib
import re
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402  pylint: disable=wrong-import-position

GIN_FILE = "mqar.gin"
EVAL_ROUNDS = 8  # every LSH model is also evaluated with this many rounds


def _attention(*types: str) -> str:
  return f"ATTENTION={tuple(types)!r}"


def _lsh(k: int) -> Tuple[str, List[str], int]:
  return f"LSH-{k}", [_attention("lsh"), f"N_HASHES={k}"], k


# name -> (label, bindings, hash rounds trained with (None: no LSH layer)).
VARIANTS = {
    "full": ("Full", [_attention("full")], None),
    "local": ("Local", [_attention("local")], None),
    **{f"lsh{k}": _lsh(k) for k in (1, 2, 4, 8)},
    "mix": ("Local / LSH-4", [_attention("local", "lsh"), "N_HASHES=4"], 4),
    "sqfull": ("Full, shared QK", [_attention("shared_qk_full")], None),
}
# What a variant sets; --gin_bindings may not bind them (the variant's label would lie).
VARIANT_NAMES = ("ATTENTION", "N_HASHES")


def variant_spec(name: str) -> Tuple[str, List[str], Optional[int]]:
  """(label, bindings, rounds) of a variant of `VARIANTS`, or `lsh<k>`: LSH with k rounds."""
  if name in VARIANTS:
    return VARIANTS[name]
  rounds = re.fullmatch(r"lsh([1-9][0-9]*)", name)
  if not rounds:
    raise KeyError(name)
  return _lsh(int(rounds.group(1)))


FULL_RUN = {"lengths": [512, 2048, 8192, 32768], "pairs": [64], "seeds": [0, 1, 2],
            "train_steps": 3000, "tokens_per_step": 16384, "eval_answers": 8192,
            "power_a": 1.0, "bindings": []}
QUICK_RUN = {"lengths": [32], "pairs": [4], "seeds": [0], "train_steps": 2,
             "tokens_per_step": 64, "eval_answers": 8, "power_a": 1.0,
             "bindings": ["VOCAB_SIZE=32", "D_MODEL=16", "ReformerConfig.d_ff=32",
                          "ReformerConfig.d_head=8", "CHUNK_LEN=8", "Experiment.log_every=1",
                          "Experiment.eval_every=2", "OptimizerConfig.warmup_steps=1"]}


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
  parser.add_argument("--variants", default=None,
                      help=f"comma-separated subset of {','.join(VARIANTS)}, or lsh<k> for k "
                           "rounds (default: all of these; --quick: full,local,lsh1,mix)")
  parser.add_argument("--lengths", default=None, help="e.g. 512,2048 (default: the run's)")
  parser.add_argument("--pairs", default=None, help="e.g. 16,64 (default: the run's)")
  parser.add_argument("--seeds", default=None, help="e.g. 0,1,2 (default: the run's)")
  parser.add_argument("--train_steps", type=int, default=None, help="steps of every run")
  parser.add_argument("--tokens_per_step", type=int, default=None)
  parser.add_argument("--eval_answers", type=int, default=None,
                      help="answers scored per evaluation (default: the run's)")
  parser.add_argument("--power_a", type=float, default=None,
                      help="query gap law (1.0: uniform, the default; Zoology: 0.01)")
  parser.add_argument("--eval_lengths", default="",
                      help="also evaluate every trained model at these lengths (one sequence "
                           "a batch), e.g. 16384; they must fit its position table "
                           "(--gin_bindings ReformerConfig.max_len=...)")
  parser.add_argument("--memory_only", action="store_true",
                      help="compile each variant's train step for its memory, train none")
  parser.add_argument("--max_train_gib", type=float, default=16.0,
                      help="train only variants whose compiled step needs at most this")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="extra gin binding for every run (repeatable)")
  parser.add_argument("--init_from", default=None,
                      help="start every run from another run's parameters (a curriculum): "
                           "its workdir, with {seed} and {variant} filled in, e.g. "
                           "/tmp/recall/64/8/{seed}/sqfull (Experiment.init_from)")
  parser.add_argument("--workdir_root", default=os.path.join(tempfile.gettempdir(), "recall"))
  common.add_out_argument(parser)
  args = parser.parse_args(argv)
  run = dict(QUICK_RUN if args.quick else FULL_RUN)
  for name in ("lengths", "pairs", "seeds"):
    if getattr(args, name) is not None:
      run[name] = common.ints(getattr(args, name))
  for name in ("train_steps", "tokens_per_step", "eval_answers", "power_a"):
    if getattr(args, name) is not None:
      run[name] = getattr(args, name)
  default = "full,local,lsh1,mix" if args.quick else ",".join(VARIANTS)
  args.variants = [v for v in (args.variants or default).split(",") if v]
  unknown = []
  for name in args.variants:
    try:
      variant_spec(name)
    except KeyError:
      unknown.append(name)
  if not args.variants or unknown:
    parser.error(f"--variants: use a comma-separated subset of {','.join(VARIANTS)} or "
                 f"lsh<k> (k rounds); got {unknown}")
  bound = [b for b in args.gin_bindings if b.split("=")[0].strip() in VARIANT_NAMES]
  if bound:
    parser.error(f"--gin_bindings {bound}: the variant sets {' and '.join(VARIANT_NAMES)}; "
                 "choose it with --variants (e.g. lsh16 for 16 rounds)")
  if (not run["lengths"] or not run["pairs"] or not run["seeds"] or min(run["seeds"]) < 0
      or min(run["pairs"]) < 1 or run["train_steps"] < 1 or run["tokens_per_step"] < 1
      or run["eval_answers"] < 1):
    parser.error("--lengths, --pairs, --train_steps, --tokens_per_step and --eval_answers "
                 "must be positive, --seeds >= 0")
  short = [(n, p) for n in run["lengths"] for p in run["pairs"] if n < 4 * p]
  if short:
    parser.error(f"--lengths: MQAR with p pairs needs length >= 4p, got (length, pairs) "
                 f"{short}")
  run["eval_lengths"] = common.ints(args.eval_lengths) if args.eval_lengths else []
  short = [(n, p) for n in run["eval_lengths"] for p in run["pairs"] if n < 4 * p]
  if short:
    parser.error(f"--eval_lengths: MQAR with p pairs needs length >= 4p, got (length, pairs) "
                 f"{short}")
  run["bindings"] = run["bindings"] + args.gin_bindings
  args.run = run
  return args


def run_bindings(run: Dict[str, Any], length: int, pairs: int, seed: int) -> List[str]:
  """The gin bindings of every run at (`length`, `pairs`, `seed`)."""
  batch = max(1, run["tokens_per_step"] // length)
  eval_batches = max(1, -(-run["eval_answers"] // (batch * pairs)))
  return [f"SEQ_LEN={length}", f"NUM_KV_PAIRS={pairs}", f"BATCH_SIZE={batch}",
          f"TRAIN_STEPS={run['train_steps']}", f"POWER_A={run['power_a']}",
          f"Experiment.eval_batches={eval_batches}", f"Experiment.seed={seed}",
          f"mqar.seed={seed}"] + run["bindings"]


def train_variant(variant: str, bindings: Sequence[str], workdir: str,
                  eval_at: Sequence[int] = (), eval_answers: int = 0,
                  pairs: int = 1) -> Dict[str, Any]:
  """Trains `variant` in `workdir` (replaced): eval accuracy (and with `EVAL_ROUNDS` rounds
  for an LSH model), step time; the same at each length of `eval_at` (`eval_answers`
  answers of `pairs` per sequence, one sequence a batch) under 'at_length'."""
  from reformer_jax import evaluate, train  # pylint: disable=import-outside-toplevel
  _, variant_bindings, n_hashes = variant_spec(variant)
  bindings = list(bindings) + variant_bindings
  shutil.rmtree(workdir, ignore_errors=True)
  start = time.perf_counter()
  summary = train.run([GIN_FILE], bindings, workdir)
  setting = common.trainer_setting(GIN_FILE, bindings)
  record = {"wall_s": time.perf_counter() - start, "summary": summary,
            "accuracy": summary["eval_accuracy"],
            "step_time_s": setting["batch_size"] * setting["seq_len"]
                           / summary["tokens_per_second"]}
  rounds = ([f"N_HASHES={EVAL_ROUNDS}"] if n_hashes is not None and n_hashes != EVAL_ROUNDS
            else None)
  if rounds:
    record[f"accuracy_lsh{EVAL_ROUNDS}"] = evaluate.evaluate(workdir, rounds)["eval_accuracy"]
  record["at_length"] = {}
  for length in eval_at:
    at = [f"SEQ_LEN={length}", f"ReformerConfig.max_len={setting['model']['max_len']}",
          "Experiment.eval_batch_size=1",
          f"Experiment.eval_batches={max(1, -(-eval_answers // pairs))}"]
    scores = {"accuracy": evaluate.evaluate(workdir, at)["eval_accuracy"]}
    if rounds:
      scores[f"accuracy_lsh{EVAL_ROUNDS}"] = evaluate.evaluate(
          workdir, at + rounds)["eval_accuracy"]
    print(f"   at length {length:,}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()),
          flush=True)
    record["at_length"][str(length)] = scores
  return record


def summarize(runs: Dict[int, Dict[str, Any]], compiled: Dict[str, Any]) -> Dict[str, Any]:
  """One variant at one (length, pairs) over seeds: accuracy mean / min / max, median step
  time, compiled memory (runs = {}: not trained)."""
  row = {"peak_bytes": compiled["peak_bytes"], "params": compiled["params"],
         "trained": bool(runs)}
  if runs:
    accuracy = [r["accuracy"] for r in runs.values()]
    row.update(accuracy=statistics.mean(accuracy), accuracy_by_seed=accuracy,
               step_time_s=statistics.median(r["step_time_s"] for r in runs.values()))
    key = f"accuracy_lsh{EVAL_ROUNDS}"
    if all(key in r for r in runs.values()):
      row[key] = statistics.mean(r[key] for r in runs.values())
    lengths = next(iter(runs.values())).get("at_length", {})
    row["at_length"] = {
        length: {k: [r["at_length"][length][k] for r in runs.values()] for k in scores}
        for length, scores in lengths.items()}
  return row


def markdown(result: Dict[str, Any]) -> str:
  """One table per (length, pairs): accuracy per seed and mean, 8 rounds, time, memory."""
  run = result["run"]
  first = next(iter(next(iter(result["settings"].values())).values()))
  model, opt = first["model"], first["optimizer"]
  lines = [
      "# Long-range recall (MQAR) against sequence length", "",
      f"Model: {model['n_layers']} layers, d_model {model['d_model']}, d_ff {model['d_ff']}, "
      f"{model['n_heads']} heads of {model['d_head']}, chunks of {model['lsh_chunk_len']}, "
      f"vocabulary {model['vocab_size']}. Training: {run['train_steps']} steps of about "
      f"{run['tokens_per_step']:,} tokens, {opt['name']} lr {opt['learning_rate']:g} "
      f"({opt['schedule']}), seeds {', '.join(map(str, run['seeds']))}. Query gaps: "
      f"power_a = {run['power_a']:g} ({'uniform' if run['power_a'] == 1 else 'power law'})."
      + (f" Each run starts from the parameters of `{run['init_from']}`."
         if run.get("init_from") else ""),
      f"Machine: {result['machine']['cpu_count']} CPUs, jax {result['machine']['jax']}, "
      f"load average {result['machine']['load_average_1_5_15'][0]:.1f} at the start.", "",
      "Accuracy: on the answers of the eval split, mean over seeds (per seed in brackets); "
      f"'LSH-{EVAL_ROUNDS} eval': the same model evaluated with {EVAL_ROUNDS} rounds. Step "
      "time: median over seeds, compilation and evaluations left out. Peak: the compiled "
      "train step's memory (XLA's analysis). Chance: 1 / pairs.", ""]
  for key, entry in result["cells"].items():
    length, pairs = entry["length"], entry["pairs"]
    lines += [f"## Length {length:,}, {pairs} pairs (chance {100 / pairs:.1f}%)", "",
              f"| variant | accuracy | LSH-{EVAL_ROUNDS} eval | step time | peak | params |",
              "|---|---|---|---|---|---|"]
    for variant, row in entry["rows"].items():
      memory = f"{row['peak_bytes'] / common.MiB:,.1f} MiB"
      if not row["trained"]:
        why = ("not trained (--memory_only)" if run["memory_only"] else
               f"does not fit (> {run['max_train_gib']:g} GiB)")
        lines.append(f"| {variant_spec(variant)[0]} | {why} | - | - | {memory} | "
                     f"{row['params']:,} |")
        continue
      seeds = ", ".join(f"{100 * v:.1f}" for v in row["accuracy_by_seed"])
      eight = row.get(f"accuracy_lsh{EVAL_ROUNDS}")
      lines.append(f"| {variant_spec(variant)[0]} | {100 * row['accuracy']:.1f}% ({seeds}) | "
                   f"{'-' if eight is None else f'{100 * eight:.1f}%'} | "
                   f"{1000 * row['step_time_s']:.0f} ms | {memory} | {row['params']:,} |")
    lines.append("")
    evaluated = [(v, row) for v, row in entry["rows"].items() if row.get("at_length")]
    if evaluated:
      lines += [f"Trained at {length:,} tokens, evaluated at other lengths (accuracy per seed):",
                "", f"| variant | length | accuracy | LSH-{EVAL_ROUNDS} eval |", "|---|---|---|---|"]
      for variant, row in evaluated:
        for at, scores in row["at_length"].items():
          cols = [", ".join(f"{100 * v:.1f}%" for v in scores[k]) if k in scores else "-"
                  for k in ("accuracy", f"accuracy_lsh{EVAL_ROUNDS}")]
          lines.append(f"| {variant_spec(variant)[0]} | {int(at):,} | {cols[0]} | {cols[1]} |")
      lines.append("")
  return "\n".join(lines)


def plot(result: Dict[str, Any], path: pathlib.Path):
  """Accuracy and compiled memory against length, one line per variant (per pairs)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (acc_ax, mem_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
  for pairs in result["run"]["pairs"]:
    cells = [e for e in result["cells"].values() if e["pairs"] == pairs]
    for variant in result["variants"]:
      lengths = [e["length"] for e in cells]
      rows = [e["rows"][variant] for e in cells]
      label = f"{variant_spec(variant)[0]}, {pairs} pairs"
      trained = [(n, r["accuracy"]) for n, r in zip(lengths, rows) if r["trained"]]
      if trained:
        acc_ax.plot(*zip(*trained), marker="o", label=label)
      mem_ax.plot(lengths, [r["peak_bytes"] / common.MiB for r in rows], marker="o",
                  label=label)
  acc_ax.set(xscale="log", xlabel="sequence length", ylabel="eval accuracy (answers)",
             ylim=(0, 1.02), title="MQAR accuracy")
  mem_ax.set(xscale="log", yscale="log", xlabel="sequence length",
             ylabel="compiled train step (MiB)", title="memory")
  for ax in (acc_ax, mem_ax):
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  common.save_figure(fig, path)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  common.configure_jax()
  run = dict(args.run, max_train_gib=args.max_train_gib, memory_only=args.memory_only,
             init_from=args.init_from)
  result = {"quick": args.quick, "machine": common.machine_info(common.default_threads()),
            "run": run, "variants": args.variants, "settings": {}, "cells": {}}
  start = time.perf_counter()
  for length in run["lengths"]:
    for pairs in run["pairs"]:
      key = f"{length}x{pairs}"
      result["settings"][key] = {  # each variant's trainer settings, as trained
          variant: common.trainer_setting(GIN_FILE, run_bindings(run, length, pairs,
                                                                 run["seeds"][0])
                                          + variant_spec(variant)[1])
          for variant in args.variants}
      entry = {"length": length, "pairs": pairs, "runs": {}, "rows": {}}
      for variant in args.variants:
        compiled = common.dry_run(GIN_FILE, run_bindings(run, length, pairs, run["seeds"][0])
                                  + variant_spec(variant)[1])
        fits = (not args.memory_only
                and compiled["peak_bytes"] <= args.max_train_gib * common.GiB)
        runs = {}
        for seed in run["seeds"] if fits else []:
          print(f"== length {length}, {pairs} pairs, seed {seed}: {variant_spec(variant)[0]}",
                flush=True)
          init = ([f"Experiment.init_from={args.init_from.format(seed=seed, variant=variant)!r}"]
                  if args.init_from else [])
          runs[seed] = train_variant(
              variant, run_bindings(run, length, pairs, seed) + init,
              os.path.join(args.workdir_root, str(length), str(pairs), str(seed), variant),
              eval_at=run["eval_lengths"], eval_answers=run["eval_answers"], pairs=pairs)
          print(f"   accuracy {runs[seed]['accuracy']:.4f}, "
                f"{1000 * runs[seed]['step_time_s']:.0f} ms/step", flush=True)
        entry["runs"][variant] = runs
        entry["rows"][variant] = summarize(runs, compiled)
      result["cells"][key] = entry
  common.write_results(common.out_dir(args), "recall", result, markdown, start, plot)
  return result


if __name__ == "__main__":
  main()
