r"""Does LSH attention learn as well as full attention? A side-by-side study on real text.

The same byte-level model (`configs/lsh_vs_full.gin`) is trained on the Python standard
library's source files (`python_stdlib_corpus`: eval text is files never trained on) with
each attention variant, at each length and seed, for the same number of steps and the same
tokens per step. Training is the trainer's (`reformer_jax.train.run` with gin bindings);
each LSH model is evaluated again with 8 hash rounds (`reformer_jax.evaluate`). Per run:
the eval bits/byte curve (every `Experiment.eval_every` steps), the step time (compilation
and evaluations left out) and the compiled memory of the train step (the trainer's dry run,
once per variant and length: XLA's memory analysis, argument + temp + output - alias).

A check of the machinery: the LSH-1 model evaluated with every chunk in view
(`strict_causal=False`, `lsh_n_chunks_before` = chunks - 1) must score what full shared-QK
attention scores, since each query then sees every earlier key once.

  python -m experiments.lsh_vs_full                  # the whole study (~2 h on 2 cores)
  python -m experiments.lsh_vs_full --quick          # tiny sizes, all variants, seconds
  python -m experiments.lsh_vs_full --variants full,lsh8 --lengths 1024 --seeds 0

Writes `<out>/lsh_vs_full.{json,md,png}`; workdirs go to `<workdir_root>/<length>/<seed>/
<variant>` and are replaced on every run.
"""
import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Sequence

if __package__ in (None, ""):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402  pylint: disable=wrong-import-position

GIN_FILE = "lsh_vs_full.gin"


def _attention(*types: str) -> str:
  return f"ReformerConfig.attention_types={tuple(types)!r}"


# name -> (label, training bindings, hash rounds trained with (None: no LSH layer)).
VARIANTS = {
    "full": ("Full", [_attention("full")], None),
    "shared_qk_full": ("Full, shared QK", [_attention("shared_qk_full")], None),
    **{f"lsh{k}": (f"LSH-{k}", [_attention("lsh"), f"N_HASHES={k}"], k) for k in (1, 2, 4, 8)},
    "local": ("Local", [_attention("local")], None),
    "mix": ("Local / LSH-1", [_attention("local", "lsh"), "N_HASHES=1"], 1),
}
EVAL_ROUNDS = 8  # every LSH model is also evaluated with this many rounds
GOAL = 0.02      # LSH-8 within 2% bits/byte of full attention

FULL_RUN = {"lengths": [1024, 4096], "seeds": [0, 1], "train_steps": 600,
            "tokens_per_step": 4096, "eval_tokens": 32768, "bindings": []}
# Tiny sizes for a smoke test: every variant, one length and seed, a few steps.
QUICK_RUN = {"lengths": [64], "seeds": [0], "train_steps": 4, "tokens_per_step": 128,
             "eval_tokens": 256,
             "bindings": ["D_MODEL=32", "ReformerConfig.d_ff=64", "ReformerConfig.d_head=16",
                          "CHUNK_LEN=8", "Experiment.eval_every=2", "Experiment.log_every=2",
                          "OptimizerConfig.warmup_steps=1"]}


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="tiny model and a few steps (a smoke run)")
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help=f"comma-separated subset of {','.join(VARIANTS)}")
  parser.add_argument("--lengths", default=None, help="e.g. 1024,4096 (default: the run's)")
  parser.add_argument("--seeds", default=None, help="e.g. 0,1 (default: the run's)")
  parser.add_argument("--train_steps", type=int, default=None, help="steps of every run")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="extra gin binding for every run (repeatable)")
  parser.add_argument("--workdir_root", default=os.path.join(tempfile.gettempdir(),
                                                             "lsh_vs_full"))
  common.add_out_argument(parser)
  args = parser.parse_args(argv)
  args.variants = [v for v in args.variants.split(",") if v]
  unknown = [v for v in args.variants if v not in VARIANTS]
  if unknown or not args.variants:
    parser.error(f"--variants: use a comma-separated subset of {','.join(VARIANTS)}")
  run = dict(QUICK_RUN if args.quick else FULL_RUN)
  for name in ("lengths", "seeds"):
    if getattr(args, name) is not None:
      run[name] = common.ints(getattr(args, name))
  if args.train_steps is not None:
    run["train_steps"] = args.train_steps
  if (not run["lengths"] or not run["seeds"] or min(run["lengths"]) < 2
      or run["train_steps"] < 1 or min(run["seeds"]) < 0):
    parser.error("--lengths, --seeds and --train_steps must be positive (seeds >= 0)")
  run["bindings"] = run["bindings"] + args.gin_bindings
  args.run = run
  return args


def run_bindings(run: Dict[str, Any], length: int, seed: int) -> List[str]:
  """The gin bindings of every run at `length` and `seed`: equal tokens per step."""
  batch = max(1, run["tokens_per_step"] // length)
  eval_batches = max(1, run["eval_tokens"] // (batch * length))
  return [f"SEQ_LEN={length}", f"BATCH_SIZE={batch}", f"TRAIN_STEPS={run['train_steps']}",
          f"Experiment.eval_batches={eval_batches}", f"Experiment.seed={seed}",
          f"python_stdlib_corpus.seed={seed}"] + run["bindings"]


def describe_setting(bindings: Sequence[str]) -> Dict[str, Any]:
  """The model, optimiser and loop of `configs/lsh_vs_full.gin` + `bindings`."""
  return common.trainer_setting(GIN_FILE, bindings)


def _eval_curve(workdir: str) -> List[Dict[str, float]]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [{"step": r["step"], "bits_per_byte": r["bits_per_byte"]}
          for r in records if r["split"] == "eval"]


def compiled_step(variant: str, bindings: Sequence[str]) -> Dict[str, Any]:
  """The trainer's dry run of `variant`: params, compiled peak bytes, flops per step."""
  return common.dry_run(GIN_FILE, list(bindings) + VARIANTS[variant][1])


def train_variant(variant: str, bindings: Sequence[str], workdir: str,
                  compiled: Dict[str, Any]) -> Dict[str, Any]:
  """Trains `variant` in `workdir` (replaced): final and curve bits/byte, step time, memory
  (`compiled`: its `compiled_step`, the same for every seed)."""
  from reformer_jax import evaluate, train  # pylint: disable=import-outside-toplevel
  _, variant_bindings, n_hashes = VARIANTS[variant]
  bindings = list(bindings) + variant_bindings
  shutil.rmtree(workdir, ignore_errors=True)
  start = time.perf_counter()
  summary = train.run([GIN_FILE], bindings, workdir)
  setting = describe_setting(bindings)
  record = {"bindings": variant_bindings, "n_hashes": n_hashes,
            "wall_s": time.perf_counter() - start, "summary": summary,
            "bits_per_byte": summary["eval_bits_per_byte"], "curve": _eval_curve(workdir),
            "step_time_s": setting["batch_size"] * setting["seq_len"]
                           / summary["tokens_per_second"],
            "peak_bytes": compiled["peak_bytes"], "params": compiled["params"],
            "flops_per_step": compiled["flops_per_step"]}
  if n_hashes is not None and n_hashes != EVAL_ROUNDS:
    record[f"bits_per_byte_lsh{EVAL_ROUNDS}"] = evaluate.evaluate(
        workdir, [f"N_HASHES={EVAL_ROUNDS}"])["eval_bits_per_byte"]
  if variant == "lsh1":
    n_chunks = -(-setting["seq_len"] // setting["model"]["lsh_chunk_len"])
    every_chunk = evaluate.evaluate(workdir, [
        "ReformerConfig.strict_causal=False",
        f"ReformerConfig.lsh_n_chunks_before={n_chunks - 1}"])["eval_bits_per_byte"]
    full = evaluate.evaluate(workdir, [_attention("shared_qk_full")])["eval_bits_per_byte"]
    record["check_every_chunk"] = {"lsh_every_chunk_bits_per_byte": every_chunk,
                                   "shared_qk_full_bits_per_byte": full,
                                   "relative_difference": abs(every_chunk - full) / full}
  return record


def summarize(runs: Dict[str, Dict[str, Dict[str, Any]]], variants: Sequence[str]
              ) -> Dict[str, Dict[str, Any]]:
  """Per variant over seeds: mean final bits/byte (own rounds and 8), its excess over full
  attention, median step time, compiled peak."""
  rows = {}
  for variant in variants:
    records = [runs[seed][variant] for seed in runs]
    row = {"bits_per_byte": statistics.mean(r["bits_per_byte"] for r in records),
           "bits_per_byte_by_seed": [r["bits_per_byte"] for r in records],
           "step_time_s": statistics.median(r["step_time_s"] for r in records),
           "peak_bytes": records[0]["peak_bytes"], "params": records[0]["params"]}
    key = f"bits_per_byte_lsh{EVAL_ROUNDS}"
    if key in records[0]:
      row[key] = statistics.mean(r[key] for r in records)
    rows[variant] = row
  for name in ("full", "shared_qk_full"):
    if name in rows:
      for row in rows.values():
        row[f"vs_{name}"] = row["bits_per_byte"] / rows[name]["bits_per_byte"] - 1
  return rows


def goal(rows: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
  """LSH-8 against full attention (both mean over seeds): met if within `GOAL`."""
  if "lsh8" not in rows or "full" not in rows:
    return {"met": None, "reason": "needs the full and lsh8 variants"}
  excess = rows["lsh8"]["vs_full"]
  return {"met": bool(excess <= GOAL), "lsh8_over_full": excess, "limit": GOAL}


def markdown(result: Dict[str, Any]) -> str:
  """The table per length: bits/byte per seed and mean, with 8 rounds, vs full, time, memory."""
  corpus, run = result["corpus"], result["run"]
  first = next(iter(result["lengths"].values()))["setting"]
  model, opt = first["model"], first["optimizer"]
  lines = [
      "# LSH attention against full attention on real text", "",
      f"Corpus: the Python {corpus['python']} standard library's .py files "
      f"({corpus['files']['train']} train files, {corpus['bytes']['train']:,} bytes; "
      f"{corpus['files']['eval']} eval files, {corpus['bytes']['eval']:,} bytes).",
      f"Model: {model['n_layers']} layers, d_model {model['d_model']}, d_ff {model['d_ff']}, "
      f"{model['n_heads']} heads of {model['d_head']}, chunks of {model['lsh_chunk_len']} "
      f"(LSH and local, 1 chunk back), buckets {model['n_buckets'] or 'default'}.",
      f"Training: {run['train_steps']} steps of {run['tokens_per_step']:,} tokens, "
      f"{opt['name']} lr {opt['learning_rate']:g} ({opt['schedule']}), seeds "
      f"{', '.join(map(str, run['seeds']))}; eval on {run['eval_tokens']:,} tokens of the "
      "eval files.",
      f"Machine: {result['machine']['cpu_count']} CPUs, jax {result['machine']['jax']}, "
      f"load average {result['machine']['load_average_1_5_15'][0]:.1f} at the start.", "",
      "Bits/byte: mean over the seeds (per seed in brackets), each model evaluated with the "
      f"attention it was trained with; 'LSH-{EVAL_ROUNDS} eval': the same model evaluated "
      f"with {EVAL_ROUNDS} rounds. 'vs full': relative excess over full attention. Step "
      "time: median over seeds, compilation and evaluations left out. Peak: the compiled "
      "train step's memory (XLA's analysis).", ""]
  for length, entry in result["lengths"].items():
    lines += [f"## Length {length}", "",
              f"| variant | bits/byte | LSH-{EVAL_ROUNDS} eval | vs full | step time | "
              "peak | params |", "|---|---|---|---|---|---|---|"]
    for variant, row in entry["rows"].items():
      seeds = ", ".join(f"{v:.4f}" for v in row["bits_per_byte_by_seed"])
      eight = row.get(f"bits_per_byte_lsh{EVAL_ROUNDS}")
      versus = row.get("vs_full")
      lines.append(f"| {VARIANTS[variant][0]} | {row['bits_per_byte']:.4f} ({seeds}) | "
                   f"{'-' if eight is None else f'{eight:.4f}'} | "
                   f"{'-' if versus is None else f'{100 * versus:+.1f}%'} | "
                   f"{1000 * row['step_time_s']:.0f} ms | "
                   f"{row['peak_bytes'] / common.MiB:.1f} MiB | {row['params']:,} |")
    verdict = entry["goal"]
    if verdict["met"] is not None:
      lines += ["", f"Goal (LSH-8 within {100 * GOAL:g}% of full attention): "
                f"{'met' if verdict['met'] else 'not met'}, LSH-8 is "
                f"{100 * verdict['lsh8_over_full']:+.2f}%."]
    check = entry.get("check_every_chunk")
    if check:
      lines += ["", f"Check: LSH-1 with every chunk in view scores "
                f"{check['lsh_every_chunk_bits_per_byte']:.5f} bits/byte, full shared-QK "
                f"attention {check['shared_qk_full_bits_per_byte']:.5f} (relative difference "
                f"{check['relative_difference']:.1e})."]
    lines.append("")
  return "\n".join(lines)


def plot(result: Dict[str, Any], path: pathlib.Path):
  """Eval bits/byte against step, one panel per length, seed 0 solid and others dashed."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  lengths = result["lengths"]
  fig, axes = plt.subplots(1, len(lengths), figsize=(6 * len(lengths), 4.5), squeeze=False)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, (length, entry) in zip(axes[0], lengths.items()):
    for i, variant in enumerate(result["variants"]):
      for j, runs in enumerate(entry["runs"].values()):
        curve = runs[variant]["curve"]
        ax.plot([p["step"] for p in curve], [p["bits_per_byte"] for p in curve],
                color=colors[i % len(colors)], linestyle="-" if j == 0 else "--",
                label=VARIANTS[variant][0] if j == 0 else None)
    ax.set(title=f"length {length}", xlabel="step", ylabel="eval bits/byte")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  common.save_figure(fig, path)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  common.configure_jax()
  from reformer_jax.data import python_stdlib  # pylint: disable=import-outside-toplevel
  run = args.run
  result = {"quick": args.quick, "machine": common.machine_info(common.default_threads()),
            "corpus": python_stdlib.corpus_record(), "run": run, "variants": args.variants,
            "goal_limit": GOAL, "lengths": {}}
  start = time.perf_counter()
  for length in run["lengths"]:
    entry = {"setting": describe_setting(run_bindings(run, length, run["seeds"][0])),
             "runs": {}}
    compiled = {}
    for seed in run["seeds"]:
      bindings = run_bindings(run, length, seed)
      entry["runs"][seed] = {}
      for variant in args.variants:
        workdir = os.path.join(args.workdir_root, str(length), str(seed), variant)
        print(f"== length {length}, seed {seed}: {VARIANTS[variant][0]}", flush=True)
        if variant not in compiled:
          compiled[variant] = compiled_step(variant, bindings)
        record = train_variant(variant, bindings, workdir, compiled[variant])
        entry["runs"][seed][variant] = record
        print(f"   {record['bits_per_byte']:.4f} bits/byte, "
              f"{1000 * record['step_time_s']:.0f} ms/step, {record['wall_s']:.0f} s",
              flush=True)
    entry["rows"] = summarize(entry["runs"], args.variants)
    entry["goal"] = goal(entry["rows"])
    check = entry["runs"][run["seeds"][0]].get("lsh1", {}).get("check_every_chunk")
    if check:
      entry["check_every_chunk"] = check
    result["lengths"][length] = entry
  common.write_results(common.out_dir(args), "lsh_vs_full", result, markdown, start, plot)
  return result


if __name__ == "__main__":
  main()
