r"""ListOps from the trainer over seeds: does every seed leave the majority-class plateau?

Trains `configs/listops_small.gin` (4-layer classifier, 128 tokens, 1,000 steps) with the
trainer (`reformer_jax.train.run`), once per attention setting and seed (`Experiment.seed`:
the initialisation, dropout and hashes; the data are the config's), and reports the eval
accuracy per run, its mean and spread (sample standard deviation, min, max) per attention
setting, and the eval split's majority class. Before the axial position tables were
initialised ~ N(0, 0.02) (they were N(0, 1)), about half of the seeds stayed on the
majority class.

  nice -n 10 python -m experiments.listops_seeds          # 6 runs of 1,000 steps
  nice -n 10 python -m experiments.listops_seeds --train_steps 300 \
      --out experiments/results/listops_seeds_300      # what ran here (shared 2 cores)
  python -m experiments.listops_seeds --quick             # 2 steps per run, a smoke run

Writes `<out>/listops_seeds.{json,md}`; workdirs go to `<workdir_root>/<attention>/<seed>`
and are replaced on every run.
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
from typing import Any, Dict, List

if __package__ in (None, ""):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402  pylint: disable=wrong-import-position

GIN_FILE = "listops_small.gin"
ATTENTION = {"reformer": ("Reformer (local + LSH)", ("local", "lsh")),
             "full": ("full attention, same size", ("full",))}
QUICK_BINDINGS = ["TRAIN_STEPS=2", "listops.n_train=64", "listops.n_eval=32",
                  "listops.n_test=32", "Experiment.log_every=1", "Experiment.eval_every=2"]


def train_seed(attention: str, seed: int, bindings: List[str], workdir: str
               ) -> Dict[str, Any]:
  """One trainer run in `workdir` (replaced): its summary, eval curve and wall time."""
  from reformer_jax import train  # pylint: disable=import-outside-toplevel
  shutil.rmtree(workdir, ignore_errors=True)
  bindings = bindings + [f"ReformerConfig.attention_types={ATTENTION[attention][1]!r}",
                         f"Experiment.seed={seed}"]
  start = time.perf_counter()
  summary = train.run([GIN_FILE], bindings, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return {"bindings": bindings, "wall_s": time.perf_counter() - start, "summary": summary,
          "eval_accuracy": summary["eval_accuracy"],
          "curve": [{"step": r["step"], "split": r["split"], "loss": r["loss"],
                     "accuracy": r["accuracy"]} for r in records]}


def spread(values: List[float]) -> Dict[str, float]:
  """Mean, sample standard deviation (0 for one value), min and max."""
  return {"mean": statistics.mean(values),
          "std": statistics.stdev(values) if len(values) > 1 else 0.0,
          "min": min(values), "max": max(values)}


def markdown(result: Dict[str, Any]) -> str:
  lines = ["# ListOps (configs/listops_small.gin) over seeds, from the trainer", "",
           f"Steps per run: {result['train_steps']}; seeds {result['seeds']}; majority class "
           f"of the eval split: {100 * result['majority_class_accuracy']:.1f}%.", "",
           "| attention | eval accuracy per seed | mean | std | min | max |",
           "|---|---|---|---|---|---|"]
  for attention, entry in result["attention"].items():
    per_seed = ", ".join(f"{100 * r['eval_accuracy']:.1f}%" for r in entry["runs"].values())
    s = entry["spread"]
    lines.append(f"| {ATTENTION[attention][0]} | {per_seed} | {100 * s['mean']:.1f}% | "
                 f"{100 * s['std']:.1f} | {100 * s['min']:.1f}% | {100 * s['max']:.1f}% |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="2 steps per run (a smoke run)")
  parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
  parser.add_argument("--train_steps", type=int, default=None,
                      help="steps per run (default: the config's 1,000; the cosine schedule "
                           "ends there)")
  parser.add_argument("--attention", default=",".join(ATTENTION),
                      help=f"comma-separated subset of {','.join(ATTENTION)}")
  parser.add_argument("--workdir_root", default=os.path.join(tempfile.gettempdir(),
                                                             "listops_seeds"))
  common.add_out_argument(parser)
  args = parser.parse_args(argv)
  seeds = common.ints(args.seeds)
  attentions = [a for a in args.attention.split(",") if a]
  if (not seeds or min(seeds) < 0 or not attentions or set(attentions) - set(ATTENTION)
      or (args.train_steps is not None and args.train_steps < 1)):
    parser.error(f"--seeds: non-negative integers; --attention: a subset of "
                 f"{','.join(ATTENTION)}; --train_steps: positive")
  common.configure_jax()
  bindings = QUICK_BINDINGS if args.quick else []
  if args.train_steps is not None:
    bindings = bindings + [f"TRAIN_STEPS={args.train_steps}",
                           f"Experiment.eval_every={args.train_steps}"]
  start = time.perf_counter()
  result = {"quick": args.quick, "seeds": seeds, "bindings": bindings,
            "machine": common.machine_info(common.default_threads()), "attention": {}}
  for attention in attentions:
    runs = {}
    for seed in seeds:
      print(f"== {attention}, seed {seed}", flush=True)
      runs[seed] = train_seed(attention, seed, list(bindings),
                              os.path.join(args.workdir_root, attention, str(seed)))
      print(f"   eval accuracy {runs[seed]['eval_accuracy']:.4f} "
            f"({runs[seed]['wall_s']:.0f} s)", flush=True)
    result["attention"][attention] = {
        "attention_types": list(ATTENTION[attention][1]), "runs": runs,
        "spread": spread([r["eval_accuracy"] for r in runs.values()])}
  first = next(iter(next(iter(result["attention"].values()))["runs"].values()))
  result["train_steps"] = first["summary"]["step"]
  result["majority_class_accuracy"] = first["summary"]["majority_class_accuracy"]
  common.write_results(common.out_dir(args), "listops_seeds", result, markdown, start)
  print(markdown(result))
  return result


if __name__ == "__main__":
  main()
