r"""The crime-and-punishment training step at 524,288 tokens on an accelerator (GPU, TPU).

Runs the step that `memory_vs_length` runs on the CPU (forward, backward, Adam; batch 1)
on JAX's default backend, each precision variant in a fresh subprocess, and records the
device, the median step time, tokens/s, the device's `peak_bytes_in_use` (the allocator's
high-water mark over the process, compilation included) and the compiled program's peak,
next to the CPU's step time and max RSS for the same length and variant from
`results/memory_vs_length.json`. Writes JSON and a Markdown table.

  python -m experiments.accelerator_step                       # on the GPU machine
  python -m experiments.accelerator_step --lengths 65536,524288 --dtypes float32
  python -m experiments.accelerator_step --quick --out /tmp/q  # tiny model, any backend
"""
import argparse
import json
import os
import pathlib
import sys

if __package__ in (None, ""):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402  pylint: disable=wrong-import-position
from experiments import memory_vs_length  # noqa: E402  pylint: disable=wrong-import-position


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--lengths", default="524288")
  parser.add_argument("--dtypes", default="float32,bfloat16-streams",
                      help=f"precision variants: {', '.join(memory_vs_length.VARIANTS)}")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per run")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps per run")
  parser.add_argument("--platform", default=None,
                      help="JAX_PLATFORMS of the runs (default: JAX's default backend)")
  parser.add_argument("--cpu_results", default=None,
                      help="memory_vs_length JSON with the CPU runs to compare with "
                           "(default: the committed one, if any; none with --quick)")
  parser.add_argument("--threads", type=int, default=common.default_threads())
  parser.add_argument("--timeout", type=float, default=1800.)
  parser.add_argument("--quick", action="store_true",
                      help="tiny model at 64 tokens, as memory_vs_length --quick (smoke "
                           "test; runs on a CPU too)")
  common.add_out_argument(parser)
  args = parser.parse_args(argv)
  args.lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
  args.dtypes = [x.strip() for x in args.dtypes.split(",") if x.strip()]
  unknown = [d for d in args.dtypes if d not in memory_vs_length.VARIANTS]
  if unknown:
    parser.error(f"unknown precision variants {unknown}; choose from "
                 f"{list(memory_vs_length.VARIANTS)}")
  if args.quick:
    args.lengths = [64]
  if args.cpu_results is None:
    committed = common.RESULTS_DIR / "memory_vs_length.json"
    args.cpu_results = None if args.quick or not committed.is_file() else str(committed)
  elif not pathlib.Path(args.cpu_results).is_file():
    parser.error(f"--cpu_results {args.cpu_results} does not exist; run "
                 "`python -m experiments.memory_vs_length` or point it at its JSON")
  return args


def cpu_runs(path) -> dict:
  """{(length, variant): run} of a memory_vs_length JSON's measured runs."""
  result = json.loads(pathlib.Path(path).read_text())
  return {(m["length"], memory_vs_length.variant_of(m.get("config", {}))): m
          for m in result.get("measured", []) if "error" not in m}


def markdown(result) -> str:
  """One row per run: the accelerator's numbers and the CPU's for the same step."""
  gib = lambda n: "—" if n is None else f"{n / common.GiB:.2f}"
  lines = ["| device | tokens | precision | step (s) | tokens/s | peak_bytes_in_use (GiB) "
           "| compiled peak (GiB) | CPU step (s) | CPU max RSS (GiB) | CPU / device time |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
  for run in result["runs"]:
    if "error" in run:
      lines.append(f"| — | {run['length']} | {run['variant']} | {run['error']} "
                   "| | | | | | |")
      continue
    cpu = run.get("cpu")
    cells = [run["device"]["kind"], run["length"], run["variant"],
             f"{run['step_time_s']:.3f}", f"{run['tokens_per_s']:,.0f}",
             gib(run["device_peak_bytes_in_use"]), gib(run["peak_bytes"])]
    cells += ([f"{cpu['step_time_s']:.2f}", gib(cpu["max_rss_bytes"]),
               f"{cpu['step_time_s'] / run['step_time_s']:.1f}x"] if cpu else ["—"] * 3)
    lines.append("| " + " | ".join(str(c) for c in cells) + " |")
  return "\n".join(lines)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  common.configure_jax()
  base = dict(common.QUICK_CHANGES, n_layers=2) if args.quick else {}
  reference = cpu_runs(args.cpu_results) if args.cpu_results else {}
  result = {"machine": common.machine_info(args.threads), "quick": args.quick,
            "config": common.config_record(common.crime_and_punishment(**base)[0]),
            "cpu_results": args.cpu_results, "runs": []}
  for variant in args.dtypes:
    for length in args.lengths:
      spec = {"config": dict(base, **memory_vs_length.VARIANTS[variant]), "length": length,
              "steps": args.steps, "warmup": args.warmup}
      run = common.measure("accelerator_step", spec, args.threads, args.timeout,
                           platforms=args.platform)
      run.update(length=length, variant=variant, cpu=reference.get((length, variant)))
      if run["cpu"]:
        run["cpu"] = {k: run["cpu"][k] for k in ("step_time_s", "max_rss_bytes", "threads")}
      result["runs"].append(run)
      if "error" in run:
        print(f"L={length} {variant}: {run['error']}", flush=True)
      else:
        peak = run["device_peak_bytes_in_use"]
        print(f"L={length} {variant} on {run['device']['kind']}: step "
              f"{run['step_time_s']:.3f} s, {run['tokens_per_s']:,.0f} tokens/s, "
              f"peak_bytes_in_use "
              f"{'n/a' if peak is None else f'{peak / common.GiB:.2f} GiB'}", flush=True)
  result["load_average_after"] = list(os.getloadavg())
  out = common.out_dir(args)
  common.write_json(out / "accelerator_step.json", result)
  (out / "accelerator_step.md").write_text(markdown(result) + "\n")
  print(f"wrote {out / 'accelerator_step.json'} and .md")
  return result


if __name__ == "__main__":
  if not common.worker_main(sys.argv, common.jax_train_worker):
    main()
