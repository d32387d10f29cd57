r"""The Reformer paper's duplication-task table (Table 2), beside the paper's numbers.

Trains one model per row (shared-QK full attention, LSH with 4, 2 and 1 hash rounds) with
the trainer (`reformer_jax.train.run`), then evaluates each with every column (full
attention and LSH with 8, 4, 2, 1 rounds) through `reformer_jax.evaluate.evaluate` with
gin bindings: `ReformerConfig.attention_types=('shared_qk_full',)` or `('lsh',)` and
`N_HASHES=k`. Full shared-QK attention and LSH attention have the same parameters, so every
model can be evaluated both ways. Accuracy is on the copied half only (the task's weights).

Each variant repeats the table with extra gin bindings: `strict` is the library's default
strictly causal LSH attention; `hf_windows` is `ReformerConfig.strict_causal=False`, the
chunk windows of Hugging Face and trax.

  python -m experiments.duplication_table              # configs/duplication_small.gin
  python -m experiments.duplication_table --variants strict --rows lsh2 --columns full,lsh2
  python -m experiments.duplication_table --gin_file duplication.gin --variants strict \
      --name duplication_paper                         # the paper's setting (accelerator)

Writes `<out>/<name>.json` (every number, the settings, wall times, the machine) and
`<out>/<name>.md` (the tables); `<name>` defaults to the gin file's stem. Workdirs (config,
checkpoint, metrics) go to `<workdir_root>/<variant>/<row>` and are replaced on every run.
"""
import argparse
import dataclasses
import json
import math
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, ""):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402  pylint: disable=wrong-import-position

FULL = "ReformerConfig.attention_types=('shared_qk_full',)"
LSH = "ReformerConfig.attention_types=('lsh',)"


def _lsh(n_hashes: int) -> List[str]:
  return [LSH, f"N_HASHES={n_hashes}"]


# Rows (how a model is trained) and columns (how it is evaluated), as gin bindings.
ROWS = {"full": [FULL], "lsh4": _lsh(4), "lsh2": _lsh(2), "lsh1": _lsh(1)}
COLUMNS = {"full": [FULL], "lsh8": _lsh(8), "lsh4": _lsh(4), "lsh2": _lsh(2),
           "lsh1": _lsh(1)}
LABELS = {"full": "Full", "lsh8": "LSH-8", "lsh4": "LSH-4", "lsh2": "LSH-2", "lsh1": "LSH-1"}
VARIANTS = {"strict": [], "hf_windows": ["ReformerConfig.strict_causal=False"]}
VARIANT_TITLES = {"strict": "strictly causal LSH (the library's default)",
                  "hf_windows": "Hugging Face / trax chunk windows (strict_causal=False)"}

# Paper Table 2 (accuracy, %): 1 layer, d_model = d_ff = 256, 4 heads, 1024 tokens, 150k steps.
PAPER = {"full": {"full": 100.0, "lsh8": 94.8, "lsh4": 92.5, "lsh2": 76.9, "lsh1": 52.5},
         "lsh4": {"full": 0.8, "lsh8": 100.0, "lsh4": 99.9, "lsh2": 99.4, "lsh1": 91.9},
         "lsh2": {"full": 0.8, "lsh8": 100.0, "lsh4": 99.9, "lsh2": 98.1, "lsh1": 86.8},
         "lsh1": {"full": 0.8, "lsh8": 99.9, "lsh4": 99.6, "lsh2": 94.8, "lsh1": 77.9}}


def _names(parser, text: str, known: Dict[str, Any], what: str) -> List[str]:
  """The comma-separated names in `text`; a parser error names the valid ones."""
  names = [n for n in text.split(",") if n]
  unknown = [n for n in names if n not in known]
  if unknown or not names:
    parser.error(f"--{what}={text!r}: use a comma-separated subset of {','.join(known)}")
  return names


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--gin_file", default="duplication_small.gin",
                      help="run config (looked up as given, then in configs/)")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="extra gin binding for every run (repeatable), e.g. 'TRAIN_STEPS=500'")
  parser.add_argument("--rows", default=",".join(ROWS), help="training attentions")
  parser.add_argument("--columns", default=",".join(COLUMNS), help="evaluation attentions")
  parser.add_argument("--variants", default=",".join(VARIANTS), help="LSH variants")
  parser.add_argument("--name", default=None, help="output file stem (default: gin file stem)")
  parser.add_argument("--out", default=str(common.RESULTS_DIR))
  parser.add_argument("--workdir_root", default=os.path.join(tempfile.gettempdir(),
                                                             "duplication_table"))
  args = parser.parse_args(argv)
  args.rows = _names(parser, args.rows, ROWS, "rows")
  args.columns = _names(parser, args.columns, COLUMNS, "columns")
  args.variants = _names(parser, args.variants, VARIANTS, "variants")
  args.name = args.name or pathlib.Path(args.gin_file).stem
  return args


def describe_setting(gin_file: str, bindings: Sequence[str]) -> Dict[str, Any]:
  """The task, model and optimiser of `gin_file` + `bindings` (attention left as bound)."""
  from reformer_jax.trainer import gin_setup  # pylint: disable=import-outside-toplevel
  gin_setup.parse([gin_file], bindings)
  exp = gin_setup.make_experiment()
  data = exp.make_data()
  return {"gin_file": gin_file, "gin_bindings": list(bindings),
          "task": {"n_symbols": data.n_symbols, "vocab_size": data.vocab_size,
                   "seq_len": exp.seq_len, "seed": data.seed},
          "batch_size": exp.batch_size, "train_steps": exp.train_steps,
          "log_every": exp.log_every,
          "eval_batches": exp.eval_batches,
          "eval_batch_size": exp.eval_batch_size or exp.batch_size,
          "seed": exp.seed, "model": common.config_record(exp.model),
          "optimizer": dataclasses.asdict(exp.optimizer)}


def train_row(gin_file: str, bindings: Sequence[str], workdir: str) -> Dict[str, Any]:
  """Trains one model from scratch in `workdir` (replaced); the trainer's summary + wall time."""
  from reformer_jax import train  # pylint: disable=import-outside-toplevel
  shutil.rmtree(workdir, ignore_errors=True)
  start = time.perf_counter()
  summary = train.run([gin_file], list(bindings), workdir)
  wall = time.perf_counter() - start
  return {"wall_s": wall, "summary": summary, "learned_at_step": learned_at_step(workdir)}


def learned_at_step(workdir: str, accuracy: float = 0.9) -> Optional[int]:
  """The first logged step whose training accuracy reached `accuracy` (None: never).

  Copying is learned suddenly after a plateau at chance; this is where the plateau ended.
  """
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if record["split"] == "train" and record["accuracy"] >= accuracy:
        return record["step"]
  return None


def evaluate_column(workdir: str, bindings: Sequence[str]) -> Dict[str, Any]:
  """Eval-split metrics of the model in `workdir` with the attention that `bindings` set."""
  from reformer_jax import evaluate  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  metrics = evaluate.evaluate(workdir, list(bindings))
  return {"accuracy": metrics["eval_accuracy"], "loss": metrics["eval_loss"],
          "step": metrics["step"], "wall_s": time.perf_counter() - start}


def run_variant(args, variant: str) -> Dict[str, Any]:
  """Trains every row of `variant` and evaluates it with every column."""
  extra = VARIANTS[variant] + args.gin_bindings
  rows = {}
  for row in args.rows:
    workdir = os.path.join(args.workdir_root, variant, row)
    print(f"== {variant}: training {LABELS[row]} in {workdir}", flush=True)
    record = train_row(args.gin_file, extra + ROWS[row], workdir)
    record["eval"] = {}
    for column in args.columns:
      record["eval"][column] = evaluate_column(workdir, extra + COLUMNS[column])
      print(f"   {LABELS[row]} evaluated with {LABELS[column]}: accuracy "
            f"{100 * record['eval'][column]['accuracy']:.2f}%", flush=True)
    rows[row] = record
  return {"bindings": VARIANTS[variant], "title": VARIANT_TITLES[variant], "rows": rows}


def _percent(value: float) -> str:
  """An accuracy in %, truncated to 0.1 (99.96% reads 99.9%, only 1.0 reads 100%)."""
  return "100%" if value >= 1 else f"{math.floor(1000 * value) / 10:.1f}%"


def markdown(result: Dict[str, Any]) -> str:
  """The tables: our accuracy with the paper's in parentheses, steps and wall time per row."""
  setting = result["setting"]
  task, model, opt = setting["task"], setting["model"], setting["optimizer"]
  columns = result["columns"]
  lines = [
      f"# Duplication task (paper Table 2): `{setting['gin_file']}`", "",
      f"Task: `0 w 0 w`, w = {task['n_symbols']} symbols from 1..{task['vocab_size'] - 1}, "
      f"length {task['seq_len']}; accuracy on the copied half, "
      f"{setting['eval_batches'] * setting['eval_batch_size']} eval sequences "
      f"({setting['eval_batches'] * setting['eval_batch_size'] * task['n_symbols']} tokens).",
      f"Model: {model['n_layers']} layer, d_model {model['d_model']}, d_ff {model['d_ff']}, "
      f"{model['n_heads']} heads of {model['d_head']}, {model['positional']} positions; LSH "
      f"chunk {model['lsh_chunk_len']}, {model['n_buckets'] or 'default'} buckets, "
      f"{model['lsh_n_chunks_before']} chunk before.",
      f"Training: {setting['train_steps']} steps of {setting['batch_size']} sequences, "
      f"{opt['name']} lr {opt['learning_rate']:g} ({opt['schedule']}, warmup "
      f"{opt['warmup_steps']}), seed {setting['seed']}."]
  if setting["gin_bindings"]:
    lines.append(f"Extra bindings: `{'`, `'.join(setting['gin_bindings'])}`.")
  machine = result["machine"]
  lines += [f"Machine: {machine['cpu_count']} CPUs ({machine['platform']}), load average "
            f"{machine['load_average_1_5_15'][0]:.1f} at the start (shared), "
            f"jax {machine['jax']}.", "",
            "Cells: our accuracy (the paper's). Rows: trained with; columns: evaluated with. "
            "Train time is the wall time of the whole training run (compilation and the "
            "final evaluation included); 90% at: the first logged step (every "
            f"{setting['log_every']}) whose training accuracy reached 90% (copying is learned "
            "suddenly, after a plateau at chance).", ""]
  for variant in result["variants"].values():
    lines += [f"## {variant['title']}", ""]
    if variant["bindings"]:
      lines += [f"Bindings: `{'`, `'.join(variant['bindings'])}`.", ""]
    lines.append("| train \\ eval | " + " | ".join(LABELS[c] for c in columns)
                 + " | steps | 90% at | train time |")
    lines.append("|---" * (len(columns) + 4) + "|")
    for row, record in variant["rows"].items():
      cells = [f"{_percent(record['eval'][c]['accuracy'])} ({PAPER[row][c]:g}%)"
               for c in columns]
      lines.append(f"| {LABELS[row]} | " + " | ".join(cells)
                   + f" | {record['summary']['step']} | {record['learned_at_step'] or '-'}"
                   f" | {record['wall_s']:.0f} s |")
    lines.append("")
  return "\n".join(lines)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  common.configure_jax()
  result = {"machine": common.machine_info(common.default_threads()),
            "setting": describe_setting(args.gin_file, args.gin_bindings),
            "rows": args.rows, "columns": args.columns, "paper": PAPER, "variants": {}}
  start = time.perf_counter()
  for variant in args.variants:
    result["variants"][variant] = run_variant(args, variant)
  result["total_wall_s"] = time.perf_counter() - start
  result["load_average_after"] = list(os.getloadavg())
  out = pathlib.Path(args.out)
  common.write_json(out / f"{args.name}.json", result)
  (out / f"{args.name}.md").write_text(markdown(result) + "\n")
  print(f"wrote {out / args.name}.json and .md")
  return result


if __name__ == "__main__":
  main()
