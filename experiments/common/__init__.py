"""Shared measuring helpers of the benchmark scripts (`from experiments import common`).

* configs: `crime_and_punishment()` reads `configs/crime_and_punishment.gin` (model and
  optimiser) through the trainer's gin setup; `enwik8()` reads `configs/enwik8.gin`.
* compiled: `compile_train_step` compiles the trainer's own train step
  (`reformer_jax.trainer.steps`: forward, backward, Adam update, state donated) for
  abstract shapes; `memory_stats` turns XLA's memory analysis into bytes, with
  `peak = argument + temp + output - alias` (per device; deterministic on CPU).
* xla_dump: `peak_buffers` reads XLA's dump of the compiled program (`xla_dump_to`) and
  lists the buffers live at the peak, with their shapes and the source operation that
  made them.
* runs: `measure` runs a worker in a fresh subprocess (so its max RSS is its own), pinned
  to the same CPUs for every framework; jax_worker: `jax_train_worker` is the JAX one.
* records: `machine_info`, `write_json`, `config_record`, `save_figure`, units.
* trainer_runs: for studies that train through the trainer with gin bindings: `ints`,
  `trainer_setting`, `dry_run`, `write_results` (json, md, png).
* Results go to `RESULTS_DIR` (committed) or `--out`; a `--quick` run without `--out`
  writes to `QUICK_RESULTS_DIR` instead (`add_out_argument`, `out_dir`, here: they read
  the two from this module, so a test redirects them by setting `common.RESULTS_DIR`).
"""
import pathlib
import tempfile

from experiments.common.compiled import (TRAIN_STEPS, build_train_step, compile_memory,
                                         compile_train_step, memory_stats, train_batch_shapes)
from experiments.common.configs import (QUICK_CHANGES, configure_jax, crime_and_punishment,
                                        enwik8, param_count)
from experiments.common.jax_worker import jax_train_worker
from experiments.common.records import (GiB, MiB, config_record, gib, machine_info,
                                        powers_of_two, save_figure, write_json)
from experiments.common.runs import (REPO, cpu_seconds, default_threads, max_rss_bytes,
                                     measure, release_free_memory, reset_peak_rss, rss,
                                     timed_steps, worker_main)
from experiments.common.trainer_runs import dry_run, ints, trainer_setting, write_results
from experiments.common.xla_dump import peak_buffers

RESULTS_DIR = REPO / "experiments" / "results"
# Where --quick runs write without --out: never over the committed results.
QUICK_RESULTS_DIR = pathlib.Path(tempfile.gettempdir()) / "reformer_jax_quick_results"


def add_out_argument(parser):
  """Adds `--out` to a script's parser that has `--quick`; read it with `out_dir`."""
  parser.add_argument("--out", default=None,
                      help=f"results directory (default: {RESULTS_DIR}; with --quick: "
                           f"{QUICK_RESULTS_DIR}, so a smoke run never overwrites the "
                           "committed results)")


def out_dir(args) -> pathlib.Path:
  """`--out` when given; else `RESULTS_DIR`, or `QUICK_RESULTS_DIR` for a --quick run."""
  if args.out is not None:
    return pathlib.Path(args.out)
  return QUICK_RESULTS_DIR if args.quick else RESULTS_DIR


__all__ = ["GiB", "MiB", "QUICK_CHANGES", "QUICK_RESULTS_DIR", "REPO", "RESULTS_DIR",
           "TRAIN_STEPS", "add_out_argument", "build_train_step", "compile_memory",
           "compile_train_step", "config_record", "configure_jax", "cpu_seconds",
           "crime_and_punishment", "default_threads", "dry_run", "enwik8", "gib", "ints",
           "jax_train_worker", "machine_info", "max_rss_bytes", "measure", "memory_stats",
           "out_dir", "param_count", "peak_buffers", "powers_of_two", "release_free_memory",
           "reset_peak_rss", "rss", "save_figure", "timed_steps", "train_batch_shapes",
           "trainer_setting", "worker_main", "write_json", "write_results"]
