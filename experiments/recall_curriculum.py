r"""MQAR recall at 16,384 tokens by a curriculum, in one command: LSH against local attention.

Each seed's model (`configs/mqar.gin`: 2 layers of width 64, chunks of 64; 8 pairs,
vocabulary 32, the filler all token 0, one position table for 16,384 tokens) learns the
lookup at 64 tokens, then the same parameters continue at 256, 2,048 and 16,384 tokens
(`Experiment.init_from`). Two tracks go through the same stages, lengths, steps and data:
`lsh` (shared-QK full attention at 64 tokens, then LSH with 64 buckets at every length from
2,048 on, 8 rounds, and 16 in a last short stage) and `local` (local attention throughout).
Queries after the first stage are placed uniformly, so a query's pair lies anywhere behind
it (at 16,384 tokens about 8,000 tokens back on average).

Every stage trains on its own sequences (`mqar.seed` = 1000 x stage + seed): a run started
with `init_from` counts its steps from 0 and MQAR's batches are a function of (`mqar.seed`,
step), so stages sharing a data seed would replay the same first sequences. Each final model
is then scored on the test split of `mqar.seed=900` (`TEST_SEED`), which no stage trains or
evaluates on, with the rounds it was trained with and with `TEST_ROUNDS`.

  python -m experiments.recall_curriculum                   # 3 seeds x 2 tracks, --jobs 2
  python -m experiments.recall_curriculum --tracks lsh --seeds 2
  python -m experiments.recall_curriculum --quick           # tiny, seconds (CI)

A finished stage leaves `stage.json` in its workdir (`<workdir_root>/<track>/<seed>/<stage>`)
and is not trained again by the same command (an interrupted stage resumes from its last
checkpoint); a stage whose settings changed is an error: delete its workdir. Writes
`<out>/recall_curriculum.{json,md,png}`.
"""
import argparse
import dataclasses
import json
import multiprocessing
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

if __package__ in (None, ""):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402  pylint: disable=wrong-import-position
from experiments import recall  # noqa: E402  pylint: disable=wrong-import-position

TEST_SEED = 900             # mqar.seed of the final test split: no stage uses it
TEST_ROUNDS = (16, 32)      # LSH models are also tested with these many rounds


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage: `steps` steps of `batch` sequences of `length` tokens; `variants` maps a
  track to the `experiments.recall` variant it trains with there."""
  length: int
  steps: int
  batch: int
  variants: Dict[str, str]
  power_a: float = 1.0
  bindings: Tuple[str, ...] = ()


_LONG = ("N_BUCKETS=64", "OptimizerConfig.warmup_steps=10", "Experiment.log_every=10")
FULL_STAGES = (
    Stage(64, 1500, 32, {"lsh": "sqfull", "local": "local"}, power_a=0.01,
          bindings=("Experiment.eval_every=500",)),
    Stage(256, 500, 8, {"lsh": "lsh4", "local": "local"}, bindings=("Experiment.eval_every=250",)),
    Stage(2048, 1000, 1, {"lsh": "lsh8", "local": "local"},
          bindings=("N_BUCKETS=64", "Experiment.eval_every=500")),
    Stage(16384, 300, 1, {"lsh": "lsh8", "local": "local"},
          bindings=_LONG + ("OptimizerConfig.learning_rate=1e-3", "Experiment.eval_every=150")),
    Stage(16384, 100, 1, {"lsh": "lsh16", "local": "local"},
          bindings=_LONG + ("OptimizerConfig.learning_rate=3e-4", "Experiment.eval_every=100")),
)
FULL_RUN = {"pairs": 8, "max_len": 16384, "eval_answers": 256, "test_answers": 512,
            "bindings": ["VOCAB_SIZE=32", "mqar.random_non_queries=False"]}
QUICK_STAGES = (
    Stage(16, 2, 4, {"lsh": "sqfull", "local": "local"}, power_a=0.01),
    Stage(32, 2, 2, {"lsh": "lsh2", "local": "local"}, bindings=("N_BUCKETS=4",)),
)
QUICK_RUN = {"pairs": 2, "max_len": 32, "eval_answers": 4, "test_answers": 4,
             "bindings": recall.QUICK_RUN["bindings"] + ["mqar.random_non_queries=False"]}
TRACKS = ("lsh", "local")


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
  parser.add_argument("--tracks", default=",".join(TRACKS),
                      help=f"comma-separated subset of {','.join(TRACKS)}")
  parser.add_argument("--seeds", default=None, help="e.g. 0,1,2 (default; --quick: 0)")
  parser.add_argument("--jobs", type=int, default=2,
                      help="(track, seed) curricula trained at once, each in its own process")
  parser.add_argument("--workdir_root",
                      default=os.path.join(tempfile.gettempdir(), "recall_curriculum"))
  common.add_out_argument(parser)
  args = parser.parse_args(argv)
  args.tracks = [t for t in args.tracks.split(",") if t]
  if not args.tracks or set(args.tracks) - set(TRACKS):
    parser.error(f"--tracks: use a comma-separated subset of {','.join(TRACKS)}; "
                 f"got {args.tracks}")
  try:
    args.seeds = common.ints(args.seeds or ("0" if args.quick else "0,1,2"))
  except ValueError:
    args.seeds = []
  if not args.seeds or min(args.seeds) < 0:
    parser.error(f"--seeds: comma-separated integers >= 0, e.g. 0,1,2; got {args.seeds}")
  if args.jobs < 1:
    parser.error(f"--jobs: at least 1, got {args.jobs}")
  args.stages = QUICK_STAGES if args.quick else FULL_STAGES
  args.run = dict(QUICK_RUN if args.quick else FULL_RUN)
  return args


def stage_bindings(run: Dict[str, Any], stage: Stage, index: int, track: str, seed: int,
                   init_from: Optional[str]) -> List[str]:
  """The trainer's gin bindings of stage `index` (1-based) of `track` for `seed`."""
  eval_batches = max(1, -(-run["eval_answers"] // (stage.batch * run["pairs"])))
  return ([f"SEQ_LEN={stage.length}", f"NUM_KV_PAIRS={run['pairs']}",
           f"BATCH_SIZE={stage.batch}", f"TRAIN_STEPS={stage.steps}",
           f"POWER_A={stage.power_a}", f"ReformerConfig.max_len={run['max_len']}",
           f"Experiment.eval_batches={eval_batches}", f"Experiment.seed={seed}",
           f"mqar.seed={1000 * index + seed}"]
          + run["bindings"] + list(stage.bindings)
          + recall.variant_spec(stage.variants[track])[1]
          + ([f"Experiment.init_from={init_from!r}"] if init_from else []))


def final_test_bindings(run: Dict[str, Any], rounds: Optional[int]) -> List[str]:
  """Evaluation-time bindings of the final test: TEST_SEED's split, the run's test_answers
  (one sequence a batch), `rounds` hash rounds (None: as trained)."""
  return ([f"mqar.seed={TEST_SEED}",
           f"Experiment.eval_batches={max(1, -(-run['test_answers'] // run['pairs']))}",
           "Experiment.eval_batch_size=1"]
          + ([f"N_HASHES={rounds}"] if rounds else []))


def run_stage(stage: Stage, bindings: List[str], workdir: pathlib.Path) -> Dict[str, Any]:
  """Trains one stage in `workdir` (resuming an interrupted one) unless its `stage.json`
  says it is done with these bindings; returns that record."""
  from reformer_jax import train  # pylint: disable=import-outside-toplevel
  record_path = workdir / "stage.json"
  if record_path.exists():
    record = json.loads(record_path.read_text())
    if record["bindings"] != bindings:
      raise ValueError(f"{workdir} holds a stage trained with other settings; delete that "
                       "directory (or give another --workdir_root) to train it again.")
    print(f"   {workdir}: done already, accuracy {record['accuracy']:.4f}", flush=True)
    return record
  cpu, wall = common.cpu_seconds(), time.perf_counter()
  summary = train.run([recall.GIN_FILE], bindings, str(workdir))
  record = {"bindings": bindings, "length": stage.length, "steps": stage.steps,
            "batch": stage.batch, "summary": summary, "accuracy": summary["eval_accuracy"],
            "step_time_s": stage.batch * stage.length / summary["tokens_per_second"],
            "cpu_s": common.cpu_seconds() - cpu, "wall_s": time.perf_counter() - wall}
  common.write_json(record_path, record)
  return record


def run_curriculum(job: Tuple[str, int, bool, str]) -> Dict[str, Any]:
  """Every stage of one (track, seed), then the final model's test scores."""
  track, seed, quick, workdir_root = job
  from reformer_jax import evaluate  # pylint: disable=import-outside-toplevel
  common.configure_jax()
  stages = QUICK_STAGES if quick else FULL_STAGES
  run = QUICK_RUN if quick else FULL_RUN
  root = pathlib.Path(workdir_root) / track / str(seed)
  records, init_from = [], None
  for index, stage in enumerate(stages, start=1):
    variant = stage.variants[track]
    print(f"== {track}, seed {seed}, stage {index}: {stage.length:,} tokens, "
          f"{recall.variant_spec(variant)[0]}", flush=True)
    workdir = root / f"{index}_{stage.length}_{variant}"
    record = run_stage(stage, stage_bindings(run, stage, index, track, seed, init_from),
                       workdir)
    records.append(dict(record, variant=variant))
    print(f"   accuracy {record['accuracy']:.4f}, {1000 * record['step_time_s']:.0f} ms/step",
          flush=True)
    init_from = str(workdir)
  trained_rounds = recall.variant_spec(stages[-1].variants[track])[2]
  test = {}
  more_rounds = [r for r in TEST_ROUNDS if trained_rounds and r != trained_rounds]
  for rounds in [None] + more_rounds:  # None: as trained
    cpu = common.cpu_seconds()
    metrics = evaluate.evaluate(init_from, final_test_bindings(run, rounds), split="test")
    test[str(rounds or trained_rounds or "-")] = {
        "accuracy": metrics["eval_accuracy"], "cpu_s": common.cpu_seconds() - cpu}
    print(f"   test split of mqar.seed={TEST_SEED}, "
          f"{rounds or trained_rounds or 'no'} rounds: {metrics['eval_accuracy']:.4f}",
          flush=True)
  return {"track": track, "seed": seed, "stages": records, "test": test,
          "trained_rounds": trained_rounds}


def markdown(result: Dict[str, Any]) -> str:
  """Per track: each seed's accuracy after every stage and on the test split."""
  stages = [Stage(**dict(s, bindings=tuple(s["bindings"]))) for s in result["stages"]]
  lines = ["# MQAR recall by a curriculum: LSH against local attention", "",
           f"{result['run']['pairs']} pairs, chance {100 / result['run']['pairs']:.1f}%. "
           f"Machine: {result['machine']['cpu_count']} CPUs, jax {result['machine']['jax']}, "
           f"load average {result['machine']['load_average_1_5_15'][0]:.1f} at the start; "
           f"{result['jobs']} curricula at once. Stage accuracy: the trainer's last "
           "evaluation (eval split of the stage's data seed, the rounds trained with). Test: "
           f"the final model on the test split of mqar.seed={TEST_SEED} "
           f"({result['run']['test_answers']} answers). CPU s: the stages' training.", ""]
  for track in result["tracks"]:
    runs = [r for r in result["curricula"] if r["track"] == track]
    rounds = list(runs[0]["test"])
    head = [f"{s.length:,}, {recall.variant_spec(s.variants[track])[0]}, {s.steps} x {s.batch}"
            for s in stages]
    lines += [f"## {track}", "",
              "| seed | " + " | ".join(head) + " | "
              + " | ".join(f"test, {r} rounds" if r != "-" else "test" for r in rounds)
              + " | CPU s |",
              "|---" * (len(head) + len(rounds) + 2) + "|"]
    for r in runs:
      lines.append(f"| {r['seed']} | "
                   + " | ".join(f"{100 * s['accuracy']:.1f}%" for s in r["stages"]) + " | "
                   + " | ".join(f"{100 * r['test'][k]['accuracy']:.1f}%" for k in rounds)
                   + f" | {sum(s['cpu_s'] for s in r['stages']):,.0f} |")
    if len(runs) > 1:
      cells = ([[s["accuracy"] for s in r["stages"]] for r in runs],
               [[r["test"][k]["accuracy"] for k in rounds] for r in runs])
      spread = [f"{100 * statistics.mean(c):.1f}% ({100 * min(c):.1f}-{100 * max(c):.1f})"
                for rows in cells for c in zip(*rows)]
      lines.append("| mean (min-max) | " + " | ".join(spread) + " | |")
    lines.append("")
  return "\n".join(lines)


def plot(result: Dict[str, Any], path: pathlib.Path):
  """Accuracy after each stage against its length, one line per (track, seed)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for r in result["curricula"]:
    xs = [s["length"] * (1 + 0.04 * i) for i, s in enumerate(r["stages"])]
    ax.plot(xs, [s["accuracy"] for s in r["stages"]], marker="o",
            linestyle="-" if r["track"] == "lsh" else "--",
            label=f"{r['track']}, seed {r['seed']}")
  ax.axhline(1 / result["run"]["pairs"], color="grey", linewidth=0.8, label="chance")
  ax.set(xscale="log", xlabel="sequence length of the stage", ylim=(0, 1.02),
         ylabel="eval accuracy (answers)", title="MQAR by a curriculum")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  common.save_figure(fig, path)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  jobs = [(track, seed, args.quick, args.workdir_root)
          for track in args.tracks for seed in args.seeds]
  start = time.perf_counter()
  result = {"quick": args.quick, "machine": common.machine_info(common.default_threads()),
            "run": args.run, "test_seed": TEST_SEED,
            "stages": [dataclasses.asdict(s) for s in args.stages], "tracks": args.tracks,
            "jobs": min(args.jobs, len(jobs))}
  if args.jobs == 1 or len(jobs) == 1:
    result["curricula"] = [run_curriculum(job) for job in jobs]
  else:  # each job in a fresh process ("spawn": JAX does not survive a fork)
    pool = multiprocessing.get_context("spawn").Pool(min(args.jobs, len(jobs)))
    try:
      result["curricula"] = pool.map(run_curriculum, jobs, chunksize=1)
    finally:
      pool.close()
      pool.join()
  common.write_results(common.out_dir(args), "recall_curriculum", result, markdown, start, plot)
  return result


if __name__ == "__main__":
  main()
