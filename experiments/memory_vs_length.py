r"""Memory (and time) of one crime-and-punishment training step versus sequence length.

For every length 2^lo .. 2^hi and activation dtype (float32, bfloat16) it compiles the
trainer's train step (forward, backward, Adam update; batch 1) and records XLA's memory
analysis (peak = argument + temp + output - alias). For a subset of lengths it also runs
the step, each in a fresh subprocess, and records the step time and max RSS. A depth sweep
(2 / 6 / 12 layers at one length) shows that the reversible layers keep memory flat in
depth. At the largest length of each dtype, the buffers live at the compiled peak are
listed (from XLA's buffer assignment). Writes JSON, a PNG and the README's Markdown tables.

  python -m experiments.memory_vs_length                       # the full sweep (slow)
  python -m experiments.memory_vs_length --max_len 16384 --run_lengths 4096
  python -m experiments.memory_vs_length --quick --out /tmp/q  # tiny smoke run
"""
import argparse
import math
import os
import pathlib
import sys
import tempfile
import time

if __package__ in (None, ""):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402  pylint: disable=wrong-import-position

# The targets for the 524,288-token step.
TARGET_FP32_BYTES = 4 * common.GiB
TARGET_BF16_BYTES = 2.5 * common.GiB
TARGET_LENGTH_RATIO = 8.5   # peak(L) / peak(L / 8)
TARGET_DEPTH_RATIO = 1.15   # peak(12 layers) / peak(2 layers)

# Precision variants: activation (computation) dtype, and the reversible streams' dtype.
VARIANTS = {"float32": {"dtype": "float32"},
            "bfloat16": {"dtype": "bfloat16"},
            "bfloat16-streams": {"dtype": "bfloat16", "stream_dtype": "bfloat16"}}
TARGETS = {"float32": TARGET_FP32_BYTES, "bfloat16": TARGET_BF16_BYTES,
           "bfloat16-streams": TARGET_BF16_BYTES}


def variant_of(config_changes) -> str:
  """The VARIANTS name of a run's ReformerConfig changes ('other' if none)."""
  key = (config_changes.get("dtype", "float32"), config_changes.get("stream_dtype", "float32"))
  for name, changes in VARIANTS.items():
    if (changes["dtype"], changes.get("stream_dtype", "float32")) == key:
      return name
  return "other"


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--min_len", type=int, default=2 ** 12)
  parser.add_argument("--max_len", type=int, default=2 ** 19)
  parser.add_argument("--dtypes", default="float32,bfloat16,bfloat16-streams",
                      help="comma-separated precision variants: " + ", ".join(VARIANTS)
                           + " (bfloat16 activations with bfloat16 residual streams)")
  parser.add_argument("--run_lengths", default="4096,16384,65536,524288",
                      help="lengths whose step is also run (fresh subprocess each); "
                           "those above --max_len are dropped; '' runs none")
  parser.add_argument("--run_dtypes", default="float32,bfloat16,bfloat16-streams")
  parser.add_argument("--steps", type=int, default=2, help="timed steps per run")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps per run")
  parser.add_argument("--long_len", type=int, default=2 ** 18,
                      help="runs longer than this take one timed step and no warmup")
  parser.add_argument("--depths", default="2,6,12")
  parser.add_argument("--depth_len", type=int, default=65536)
  parser.add_argument("--threads", type=int, default=common.default_threads(),
                      help="CPUs the measured runs are pinned to")
  parser.add_argument("--timeout", type=float, default=3600.,
                      help="seconds allowed per measured run")
  parser.add_argument("--no_peak_analysis", action="store_true",
                      help="skip listing the buffers live at the peak")
  parser.add_argument("--quick", action="store_true",
                      help="tiny model and lengths (smoke test)")
  common.add_out_argument(parser)
  args = parser.parse_args(argv)
  if args.quick:  # 2 tiny layers, 64 tokens, float32: three small compiles
    args.min_len, args.max_len, args.dtypes = 64, 64, "float32"
    args.depth_len, args.depths = 64, "1,2"
    args.run_lengths, args.run_dtypes, args.steps = "64", "float32", 1
  return args


def _ints(text):
  return [int(x) for x in text.split(",") if x.strip()]


def _names(text):
  return [x.strip() for x in text.split(",") if x.strip()]


def compiled_point(changes, length, analyse_peak=False):
  """Compiled memory of the train step for `changes` at `length` (+ peak buffers).

  `changes`: ReformerConfig changes; the record's 'dtype' is their VARIANTS name.
  """
  config, opt_config = common.crime_and_punishment(**changes)
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as dump:
    compiled, state_shapes = common.compile_train_step(
        config, opt_config, length, dump_dir=dump if analyse_peak else None)
    record = {"length": length, "dtype": variant_of(changes),
              "n_layers": config.n_layers, "params": common.param_count(state_shapes.params),
              **common.memory_stats(compiled)}
    record["compile_s"] = time.perf_counter() - start
    if analyse_peak:
      record["peak_buffers"] = common.peak_buffers(dump)
  record["bytes_per_token"] = record["peak_bytes"] / length
  print(f"compiled L={length:>7} {record['dtype']:>16} layers={config.n_layers:>2}: peak "
        f"{record['peak_bytes'] / common.GiB:7.3f} GiB (temp "
        f"{record['temp_bytes'] / common.GiB:.3f}) in {record['compile_s']:.0f} s", flush=True)
  return record


def checks(compiled, depth, measured, max_len):
  """The issue's targets, evaluated on what was measured (None where not measured)."""
  def peak(length, dtype):
    for r in compiled:
      if r["length"] == length and r["dtype"] == dtype:
        return r["peak_bytes"]
    return None

  out = {}
  for dtype, limit in TARGETS.items():
    value = peak(max_len, dtype)
    if value is None:
      continue
    run = [m for m in measured if m.get("length") == max_len
           and variant_of(m.get("config", {})) == dtype and "error" not in m]
    out[f"{dtype}_peak_at_max_len"] = {
        "length": max_len, "compiled_peak_gib": common.gib(value),
        "measured_max_rss_gib": common.gib(run[0]["max_rss_bytes"]) if run else None,
        "target_gib": limit / common.GiB,
        "pass": None if value is None else bool(value <= limit)}
    low = peak(max_len // 8, dtype)
    ratio = value / low if value and low else None
    out[f"{dtype}_length_ratio"] = {
        "lengths": [max_len // 8, max_len], "ratio": ratio, "target": TARGET_LENGTH_RATIO,
        "pass": None if ratio is None else bool(ratio <= TARGET_LENGTH_RATIO)}
  if len(depth) >= 2:
    ratio = depth[-1]["peak_bytes"] / depth[0]["peak_bytes"]
    out["depth_ratio"] = {"layers": [depth[0]["n_layers"], depth[-1]["n_layers"]],
                          "length": depth[0]["length"], "ratio": ratio,
                          "target": TARGET_DEPTH_RATIO,
                          "pass": bool(ratio <= TARGET_DEPTH_RATIO)}
  return out


def plot(result, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (ax, ax_depth) = plt.subplots(1, 2, figsize=(11, 4.2),
                                     gridspec_kw={"width_ratios": [2, 1]})
  colors = {"float32": "tab:blue", "bfloat16": "tab:orange", "bfloat16-streams": "tab:green"}
  for dtype, color in colors.items():
    points = [r for r in result["compiled"] if r["dtype"] == dtype]
    if points:
      ax.plot([r["length"] for r in points], [r["peak_bytes"] / common.GiB for r in points],
              "o-", color=color, label=f"{dtype}: compiled peak")
    runs = [m for m in result["measured"] if "error" not in m
            and variant_of(m.get("config", {})) == dtype]
    if runs:
      ax.plot([m["length"] for m in runs], [m["max_rss_bytes"] / common.GiB for m in runs],
              "s", mfc="none", color=color, ms=9, label=f"{dtype}: measured max RSS")
      ax.plot([m["length"] for m in runs],
              [m["steps_max_rss_bytes"] / common.GiB for m in runs], "x", color=color, ms=8,
              label=f"{dtype}: measured max RSS, timed steps only")
  ax.axhline(TARGET_FP32_BYTES / common.GiB, color="tab:blue", ls=":", lw=1,
             label="target fp32 (4 GiB)")
  ax.axhline(TARGET_BF16_BYTES / common.GiB, color="tab:orange", ls=":", lw=1,
             label="target bf16 (2.5 GiB)")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log", base=2)
  ax.set_xlabel("sequence length (tokens)")
  ax.set_ylabel("GiB")
  ax.set_title("one training step (fwd + bwd + Adam), batch 1")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7)
  depth, scanned = result["depth"], result.get("depth_scanned", [])
  if depth:
    slots = range(len(depth))
    ax_depth.bar([i - 0.2 for i in slots], [r["peak_bytes"] / common.GiB for r in depth],
                 width=0.4, color="tab:blue", label="unrolled (default)")
    if scanned:
      ax_depth.bar([i + 0.2 for i in slots], [r["peak_bytes"] / common.GiB for r in scanned],
                   width=0.4, color="tab:gray", label="scan_layers=True")
    ax_depth.set_xticks(list(slots), [str(r["n_layers"]) for r in depth])
    ax_depth.set_title(f"depth at {depth[0]['length']} tokens (fp32)")
    ax_depth.set_xlabel("layers")
    ax_depth.set_ylabel("compiled peak (GiB)")
    ax_depth.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def markdown(result) -> str:
  """The README tables: compiled peak and measured runs per length, then the checks."""
  variants = [v for v in VARIANTS if any(r["dtype"] == v for r in result["compiled"])]
  runs = {(m["length"], variant_of(m.get("config", {}))): m for m in result["measured"]}
  lines = ["| tokens | " + " | ".join(f"{v}: compiled peak" for v in variants)
           + " | " + " | ".join(f"{v}: step time / max RSS" for v in variants) + " |",
           "|---:|" + "---:|" * (2 * len(variants))]
  for length in sorted({r["length"] for r in result["compiled"]}):
    peaks = {r["dtype"]: r["peak_bytes"] for r in result["compiled"] if r["length"] == length}
    cells = [f"{peaks[v] / common.GiB:.2f} GiB" if v in peaks else "" for v in variants]
    for v in variants:
      m = runs.get((length, v))
      if m is None:
        cells.append("")
      elif "error" in m:
        cells.append(m["error"][:40])
      else:
        cells.append(f"{m['step_time_s']:.1f} s / {m['max_rss_bytes'] / common.GiB:.2f} GiB")
    lines.append(f"| {length:,} | " + " | ".join(cells) + " |")
  lines += ["", "| check | value | target | pass |", "|---|---:|---:|:---:|"]
  for name, c in result["checks"].items():
    if c["pass"] is None:
      continue  # not measured (e.g. max_len // 8 not compiled)
    if "compiled_peak_gib" in c:
      value, target = f"{c['compiled_peak_gib']:.2f} GiB", f"{c['target_gib']:.2f} GiB"
    else:
      value, target = f"{c['ratio']:.2f}", f"{c['target']:.2f}"
    lines.append(f"| {name} | {value} | {target} | {'yes' if c['pass'] else 'no'} |")
  depth, scanned = result["depth"], result.get("depth_scanned", [])
  if depth:
    lines += ["", f"| layers ({depth[0]['length']:,} tokens, float32) | unrolled (default) | "
              "`scan_layers=True` |", "|---:|---:|---:|"]
    peaks = {r["n_layers"]: r["peak_bytes"] for r in scanned}
    for r in depth:
      other = peaks.get(r["n_layers"])
      lines.append(f"| {r['n_layers']} | {r['peak_bytes'] / common.GiB:.3f} GiB | "
                   + (f"{other / common.GiB:.3f} GiB |" if other else " |"))
  return "\n".join(lines)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  common.configure_jax()
  base = dict(common.QUICK_CHANGES, n_layers=2) if args.quick else {}
  lengths = [2 ** k for k in range(int(math.log2(args.min_len)),
                                   int(math.log2(args.max_len)) + 1)]
  dtypes = _names(args.dtypes)
  unknown = [d for d in dtypes + _names(args.run_dtypes) if d not in VARIANTS]
  if unknown:
    raise SystemExit(f"unknown precision variants {unknown}; choose from {list(VARIANTS)}")
  result = {"machine": common.machine_info(args.threads), "quick": args.quick,
            "config": common.config_record(common.crime_and_punishment(**base)[0]),
            "compiled": [], "depth": [], "depth_scanned": [], "measured": []}
  cache = {}

  def point(changes, length, analyse=False):
    key = (tuple(sorted(changes.items())), length)
    if key not in cache:
      cache[key] = compiled_point(changes, length, analyse)
    return cache[key]

  n_layers = common.crime_and_punishment(**base)[0].n_layers
  for dtype in dtypes:
    for length in lengths:
      analyse = not args.no_peak_analysis and length == lengths[-1]
      result["compiled"].append(point(dict(base, **VARIANTS[dtype], n_layers=n_layers),
                                      length, analyse))
  for depth in _ints(args.depths):
    result["depth"].append(point(dict(base, dtype="float32", n_layers=depth), args.depth_len))
  for depth in _ints(args.depths):  # the same with `scan_layers` (not a target)
    result["depth_scanned"].append(point(dict(base, dtype="float32", n_layers=depth,
                                              scan_layers=True), args.depth_len))
  for dtype in _names(args.run_dtypes):
    for length in [n for n in _ints(args.run_lengths) if n <= args.max_len]:
      long = length > args.long_len
      spec = {"config": dict(base, **VARIANTS[dtype]), "length": length,
              "steps": 1 if long else args.steps, "warmup": 0 if long else args.warmup}
      record = common.measure("memory_vs_length", spec, args.threads, args.timeout)
      result["measured"].append(record)
      if "error" in record:
        print(f"run L={length} {dtype}: {record['error']}", flush=True)
      else:
        print(f"run L={length:>7} {dtype:>16}: step {record['step_time_s']:.2f} s, max RSS "
              f"{record['max_rss_bytes'] / common.GiB:.3f} GiB (steps only "
              f"{record['steps_max_rss_bytes'] / common.GiB:.3f})", flush=True)
  result["load_average_after"] = list(os.getloadavg())
  result["checks"] = checks(result["compiled"], result["depth"], result["measured"],
                            lengths[-1])
  out = common.out_dir(args)
  common.write_json(out / "memory_vs_length.json", result)
  plot(result, out / "memory_vs_length.png")
  (out / "memory_vs_length.md").write_text(markdown(result) + "\n")
  print(f"wrote {out / 'memory_vs_length.json'}, .png and .md")
  return result


if __name__ == "__main__":
  if not common.worker_main(sys.argv, common.jax_train_worker):
    main()
