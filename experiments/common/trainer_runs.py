"""Helpers of the studies that train through the trainer (`reformer_jax.train.run`) with gin
bindings per run: comma-separated integer options, a run's setting, its dry run, and the
json / md / png results."""
import dataclasses
import os
import pathlib
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from experiments.common.records import config_record, write_json


def ints(text: str) -> List[int]:
  """'512,2048' -> [512, 2048]."""
  return [int(v) for v in text.split(",") if v]


def trainer_setting(gin_file: str, bindings: Sequence[str]) -> Dict[str, Any]:
  """The model, optimiser and loop of `gin_file` + `bindings`."""
  from reformer_jax.trainer import gin_setup  # pylint: disable=import-outside-toplevel
  gin_setup.parse([gin_file], bindings)
  exp = gin_setup.make_experiment()
  return {"seq_len": exp.seq_len, "batch_size": exp.batch_size,
          "train_steps": exp.train_steps, "eval_every": exp.eval_every,
          "eval_batches": exp.eval_batches, "model": config_record(exp.model),
          "optimizer": dataclasses.asdict(exp.optimizer)}


def dry_run(gin_file: str, bindings: Sequence[str]) -> Dict[str, Any]:
  """The trainer's dry run: params, compiled peak bytes, flops per step."""
  from reformer_jax import train  # pylint: disable=import-outside-toplevel
  return train.run([gin_file], list(bindings), "", dry_run=True)


def write_results(out: pathlib.Path, stem: str, result: Dict[str, Any],
                  markdown: Callable[[Dict[str, Any]], str], started: float,
                  plot: Optional[Callable[[Dict[str, Any], pathlib.Path], None]] = None):
  """Adds `total_wall_s` (since `started`, a perf_counter) and `load_average_after` to
  `result`, writes `<out>/<stem>.json`, `.md` (and `.png` with `plot`) and says so."""
  result["total_wall_s"] = time.perf_counter() - started
  result["load_average_after"] = list(os.getloadavg())
  write_json(out / f"{stem}.json", result)
  (out / f"{stem}.md").write_text(markdown(result) + "\n")
  if plot is not None:
    plot(result, out / f"{stem}.png")
  print(f"wrote {out / stem}.json, .md{', .png' if plot else ''} "
        f"({result['total_wall_s']:.0f} s)")
