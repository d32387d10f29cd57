r"""How long a sequence fits one TPU chip: the trainer's step compiled for TPU topologies on a
CPU machine (libtpu, the `tpu-plan` extra), read from the TPU compiler's memory analysis.

For each model (configs/crime_and_punishment.gin, configs/enwik8.gin), precision variant
(float32; bfloat16 activations and streams) and chip (v4, v5e, v5p, v6e: one-chip
topologies), it compiles the training step (forward, backward, Adam; batch 1) at power-of-two
lengths, doubling until the step no longer fits the chip's usable HBM (the compiler's
figure), and records per-chip memory against length and XLA's cost estimate. `--workarounds`
compiles one length with each XLA:CPU workaround on and off (`layers/xla_cpu.py`). Every
compile runs in a fresh subprocess; results are cached in the output JSON (same model,
variant, target, length and workarounds: not compiled again unless `--fresh`, which
compiles this command's specs from --min_len to --max_len again and keeps the other
records). Writes JSON,
Markdown and a PNG. TPU compiles take minutes each at long lengths: run it with `nice`.

  python -m experiments.accelerator_plan                              # everything (hours)
  python -m experiments.accelerator_plan --models crime_and_punishment --chips v5e \
      --variants float32 --min_len 1048576
  python -m experiments.accelerator_plan --workarounds --length 65536  # on v5e:1x1
  python -m experiments.accelerator_plan --workarounds --models enwik8 --variants float32 \
      --workarounds_target v5e:2x4 --fsdp 8 --length 2048 \
      --settings default,partitioner_gathers:on   # parameters split over 8 chips
  python -m experiments.accelerator_plan --quick --out /tmp/q         # tiny model, seconds
  python -m experiments.accelerator_plan --slice v5e:2x4 --min_len 16777216 --max_len 16777216 \
      --models crime_and_punishment --variants float32   # one sequence over 8 chips
"""
import argparse
import dataclasses
import json
import math
import pathlib
import re
import subprocess
import sys
import time

if __package__ in (None, ""):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402  pylint: disable=wrong-import-position

MODELS = {"crime_and_punishment": "crime_and_punishment.gin", "enwik8": "enwik8.gin"}
VARIANTS = {"float32": {}, "bfloat16-streams": {"dtype": "bfloat16",
                                                "stream_dtype": "bfloat16"}}
# One chip of each generation (libtpu's default host is 2x2; one chip names its own bounds).
CHIPS = {"v4": "v4:1x1x1", "v5e": "v5e:1x1", "v5p": "v5p:1x1x1", "v6e": "v6e:1x1"}
# The Hugging Face blog: "under 8 GB to train on sequences of half a million tokens" (GPU).
BLOG_TOKENS, BLOG_BYTES = 524288, 8e9
# The goal: one v5e chip trains the crime-and-punishment model on this many tokens.
GOAL_TOKENS = 2 ** 21
FILE = "accelerator_plan"
# Workarounds that change only 16-bit arrays (not compiled for float32).
SIXTEEN_BIT_ONLY = {"bits_moves", "float32_accumulation"}
QUICK = dict(common.QUICK_CHANGES, n_layers=2)  # --quick: one compile of 2 tiny layers


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--chips", default=",".join(CHIPS),
                      help=f"generations ({', '.join(CHIPS)}), one chip each")
  parser.add_argument("--min_len", type=int, default=2 ** 16,
                      help="first length of the doubling search")
  parser.add_argument("--max_len", type=int, default=2 ** 24)
  parser.add_argument("--workarounds", action="store_true",
                      help="compile --length on --workarounds_target with each XLA:CPU "
                           "workaround on and off instead of the search")
  parser.add_argument("--length", type=int, default=2 ** 16)
  parser.add_argument("--workarounds_target", default="v5e:1x1")
  parser.add_argument("--fsdp", type=int, default=None,
                      help="with --workarounds: MeshConfig(data=1, fsdp=N) over the N chips "
                           "of --workarounds_target, batch N (parameters split over the "
                           "chips: what 'partitioner_gathers' changes)")
  parser.add_argument("--settings", default="",
                      help="with --workarounds: which settings (default: all; e.g. "
                           "default,all:on,ties:off)")
  parser.add_argument("--slice", default=None,
                      help="a TPU topology (e.g. v5e:2x4): search the longest sequence split "
                           "over all its chips (MeshConfig(data=1, sequence=chips)) instead "
                           "of one chip per generation")
  parser.add_argument("--layers", type=int, default=None,
                      help="n_layers of every model (default: the config's)")
  parser.add_argument("--fresh", action="store_true",
                      help="compile this command's specs from --min_len to --max_len (or "
                           "--length) again, after a change to the model; the JSON keeps the "
                           "other cached runs, which a search halving below --min_len reads")
  parser.add_argument("--timeout", type=float, default=7200.)
  parser.add_argument("--quick", action="store_true",
                      help="tiny 2-layer crime-and-punishment model at 64 tokens on v5e "
                           "(smoke test: one compile)")
  common.add_out_argument(parser)
  args = parser.parse_args(argv)
  args.settings = [v.strip() for v in args.settings.split(",") if v.strip()]
  for name, known in (("models", MODELS), ("variants", VARIANTS), ("chips", CHIPS)):
    values = [v.strip() for v in getattr(args, name).split(",") if v.strip()]
    unknown = [v for v in values if v not in known]
    if unknown:
      parser.error(f"unknown --{name} {unknown}; choose from {list(known)}")
    setattr(args, name, values)
  if args.fsdp and not args.workarounds:
    parser.error("--fsdp lays the mesh of --workarounds; add --workarounds")
  if args.quick:
    args.models, args.variants, args.chips = ["crime_and_punishment"], ["float32"], ["v5e"]
    args.min_len, args.max_len, args.length = 64, 64, 64
  return args


def experiment(spec):
  """The trainer's Experiment of `spec`'s model at `spec['length']`, batch 1."""
  from reformer_jax.trainer import gin_setup  # pylint: disable=import-outside-toplevel
  gin_setup.parse([MODELS[spec["model"]]])
  exp = gin_setup.make_experiment()
  changes = common.configs._config_changes(  # pylint: disable=protected-access
      dict(VARIANTS[spec["variant"]], **(QUICK if spec.get("quick") else {})))
  if spec.get("layers"):
    changes["n_layers"] = spec["layers"]
  length = spec["length"]
  shape = exp.model.resolved_axial_shape
  if shape[0] * shape[1] < length:  # a longer first axis of the axial position table
    changes["axial_shape"] = (-(-length // shape[1]), shape[1])
  if spec.get("sequence"):  # one sequence split over the slice's chips
    exp = dataclasses.replace(exp, mesh=dataclasses.replace(exp.mesh, data=1,
                                                            sequence=spec["sequence"]))
  if spec.get("fsdp"):  # one sequence per chip, the parameters split over the chips
    exp = dataclasses.replace(exp, mesh=dataclasses.replace(exp.mesh, data=1,
                                                            fsdp=spec["fsdp"]))
  return dataclasses.replace(exp, model=exp.model.replace(**changes), seq_len=length,
                             batch_size=spec.get("fsdp") or 1, grad_accum_steps=1)


def worker(spec):
  """Compiles the train step of `spec` for `spec['target']`: plan.plan_train's record, or
  {'fits': False, 'error'} when the compiler refuses it (temporaries beyond the HBM)."""
  common.configure_jax()
  from reformer_jax.layers import xla_cpu  # pylint: disable=import-outside-toplevel
  from reformer_jax.trainer import plan  # pylint: disable=import-outside-toplevel
  start, start_cpu = time.perf_counter(), time.process_time()
  try:
    with xla_cpu.forced(**spec.get("workarounds", {})):
      record = plan.plan_train(experiment(spec), spec["target"])
  except Exception as e:  # pylint: disable=broad-except
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "RESOURCE_EXHAUSTED" not in message:
      raise
    record = {"fits": False, "error": message[:400]}
    match = re.search(r"temporaries \(([\d.]+)([KMGT])\)", message)
    if match:
      record["temporaries_required_bytes"] = int(
          float(match.group(1)) * 2 ** (10 * "KMGT".index(match.group(2)) + 10))
  record["compile_s"] = time.perf_counter() - start
  # CPU seconds of the whole process (all compiler threads): on a shared machine the wall
  # time above mostly measures the other processes.
  record["compile_cpu_s"] = time.process_time() - start_cpu
  record["libtpu"] = plan.libtpu_version()
  return record


SPEC_DEFAULTS = {"workarounds": {}, "quick": False, "layers": None, "sequence": None,
                 "fsdp": None}


def _key(spec):
  return json.dumps({k: spec.get(k) for k in ("model", "variant", "target", "length",
                                              "workarounds", "quick", "layers", "sequence",
                                              "fsdp")},
                    sort_keys=True)


class Runs:
  """Compiles specs in fresh subprocesses, reusing the cached records of earlier runs: plans
  and the compiler's refusals (`fits` False), not compiles that failed otherwise (a crash, a
  bug since mended), which run again. `fresh`: `(min_len, max_len)`, the lengths at which
  a spec asked for is compiled once more (the other records stay), or None."""

  def __init__(self, path, fresh, timeout):
    self.path, self.timeout = path, timeout
    old = json.loads(path.read_text()) if path.is_file() else {}
    self.records = {_key(r["spec"]): r for r in old.get("runs", [])}
    self.stale = {k for k, r in self.records.items()
                  if fresh and fresh[0] <= r["spec"]["length"] <= fresh[1]}

  def run(self, spec):
    spec = dict(SPEC_DEFAULTS, **spec)
    key = _key(spec)
    if key in self.stale or self.records.get(key, {}).get("fits") is None:
      self.stale.discard(key)
      record = common.measure(FILE, spec, threads=common.default_threads(),
                              timeout=self.timeout)
      record["spec"] = spec
      record["commit"] = _commit()
      self.records[key] = record
      self.save()
      print(json.dumps({k: record.get(k) for k in ("spec", "fits", "compile_s", "compile_cpu_s",
                                                        "error")}),
            flush=True)
    return self.records[key]


  def fitting_lengths(self, spec):
    """The cached lengths at which `spec` (any length) fits its chips."""
    spec = dict(SPEC_DEFAULTS, **spec)
    family = _key(dict(spec, length=None))
    return [r["spec"]["length"] for k, r in self.records.items() if r.get("fits")
            and k not in self.stale and _key(dict(r["spec"], length=None)) == family]

  def save(self):
    """Writes the records so far (a long study interrupted keeps what it compiled)."""
    previous = json.loads(self.path.read_text()) if self.path.is_file() else {}
    common.write_json(self.path, dict(previous, runs=list(self.records.values())))


def _commit():
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=common.REPO,
                          capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def need_bytes(record):
  """Planned bytes per chip (peak + program), or None where the compiler refused."""
  memory = record.get("bytes_per_device")
  return None if memory is None else memory["peak"] + memory["program"]


def workaround_settings(names=None):
  """{setting: xla_cpu.forced choices}: the default (by target), each chosen workaround and
  each one kept for a CPU only (off by default on a TPU) forced on, each kept one forced
  off, all forced off, all forced on; `names` selects."""
  from reformer_jax.layers import xla_cpu  # pylint: disable=import-outside-toplevel
  settings = {"default": {}}
  settings.update({f"{n}:on": {n: True} for n in xla_cpu.WORKAROUNDS + xla_cpu.TRACED})
  settings.update({f"{n}:off": {n: False} for n in xla_cpu.KEPT})
  settings["all:off"] = {n: False for n in xla_cpu.WORKAROUNDS + xla_cpu.KEPT}
  settings["all:on"] = {n: True for n in xla_cpu.WORKAROUNDS + xla_cpu.KEPT}
  if names:
    unknown = [n for n in names if n not in settings]
    if unknown:
      raise SystemExit(f"unknown --settings {unknown}; choose from {list(settings)}")
    settings = {n: settings[n] for n in names}
  return settings


def fits(runs, spec, length) -> bool:
  """Whether the step of `spec` at `length` fits its chip (raises if the compile failed for
  another reason than memory)."""
  record = runs.run(dict(spec, length=length))
  if record.get("fits") is None:
    raise RuntimeError(f"{spec['target']} at {length}: {record.get('error', record)}")
  return record["fits"]


def longest_fitting(runs, spec, min_len, max_len):
  """The longest power-of-two length that fits, doubling from `min_len` (halving first
  while it does not fit), or None below 64 tokens. The doubling starts from the longest
  cached length up to `max_len` that fits (a search resumed with another `min_len`
  compiles nothing it already knows)."""
  length = max([n for n in runs.fitting_lengths(spec) if min_len <= n <= max_len],
               default=min_len)
  if not fits(runs, spec, length):
    while length > 64:
      length //= 2
      if fits(runs, spec, length):
        return length
    return None
  while length * 2 <= max_len and fits(runs, spec, length * 2):
    length *= 2
  return length


def _chip_label(target):
  """'v5e' for the one-chip topology of `CHIPS`, else the topology name (a slice)."""
  return next((g for g, t in CHIPS.items() if t == target), target)


def longest_known(runs):
  """Per model and precision, per target: the longest compiled length that fits (None if
  none does), its planned bytes, and the shortest longer length that does not fit (None
  where none was compiled: the length is then a lower bound). From every cached run, not
  only those of the last command."""
  groups = {}
  for run in runs:
    spec = run["spec"]
    if spec["workarounds"] or run.get("fits") is None:
      continue
    row = groups.setdefault((spec["model"], spec["variant"], spec.get("layers") or 0), {})
    row.setdefault(_chip_label(spec["target"]), []).append(run)
  rows = []
  for (model, variant, layers), chips in sorted(groups.items()):
    cells = {}
    for label, chip_runs in chips.items():
      fitting = [r for r in chip_runs if r["fits"]]
      best = max(fitting, key=lambda r: r["spec"]["length"], default=None)
      length = None if best is None else best["spec"]["length"]
      refused = [r["spec"]["length"] for r in chip_runs
                 if not r["fits"] and (length is None or r["spec"]["length"] > length)]
      cells[label] = {"length": length, "need_bytes": None if best is None else need_bytes(best),
                      "refused": min(refused, default=None)}
    rows.append({"model": model + (f" ({layers} layers)" if layers else ""),
                 "variant": variant, "chips": cells})
  return rows


def _longest_cell(cell, gib):
  if cell is None:
    return "—"
  refused = "" if cell["refused"] is None else f"; {cell['refused']:,} does not fit"
  if cell["length"] is None:
    return f"none{refused}"
  bound = "" if cell["refused"] is not None else "≥ "
  return f"{bound}{cell['length']:,} ({gib(cell['need_bytes'])} GiB{refused})"


def markdown(result):
  gib = lambda n: "—" if n is None else f"{n / common.GiB:.2f}"
  rows = longest_known(result["runs"])
  labels = sorted({label for row in rows for label in row["chips"]})
  usable = lambda label: result["usable_hbm"].get(label.split(":")[0])
  lines = ["| model | precision | " + " | ".join(
      f"{label} ({gib(usable(label))} GiB usable per chip)" for label in labels) + " |",
           "|---|---|" + "---:|" * len(labels)]
  for row in rows:
    cells = [_longest_cell(row["chips"].get(label), gib) for label in labels]
    lines.append(f"| {row['model']} | {row['variant']} | " + " | ".join(cells) + " |")
  lines.append("\nLongest compiled length that fits (planned per chip; the shortest longer "
               "length that does not; ≥: no longer length compiled), from every run in the "
               "JSON.")
  lines += ["", "| model | precision | chip | tokens | arguments | temporaries | outputs | "
            "aliased | program | planned (GiB) | fits | flops (estimate) | "
            "bytes accessed (estimate) | compile (CPU s / wall s) | commit |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---|"]
  for run in sorted(result["runs"], key=lambda r: (r["spec"]["model"], r["spec"]["variant"],
                                                   r["spec"]["target"], r["spec"]["length"])):
    if run["spec"]["workarounds"]:
      continue
    lines.append(_run_row(run, gib))
  if result.get("workarounds"):
    lines += ["", "| workarounds (v. the default for the target) | planned (GiB) | "
              "temporaries (GiB) | bytes accessed (estimate) | flops (estimate) | compile |",
              "|---|---:|---:|---:|---:|---|"]
    for row in result["workarounds"]:
      run = row["run"]
      cost = run.get("compiler_estimate", {})
      memory = run.get("bytes_per_device", {})
      lines.append(f"| {row['name']} | {gib(need_bytes(run))} | "
                   f"{gib(memory.get('temporaries'))} | {_num(cost.get('bytes_accessed'))} | "
                   f"{_num(cost.get('flops'))} | {_compile_note(run)} |")
  return "\n".join(lines) + "\n"


def _compile_note(run):
  if "error" not in run:
    return f"{run.get('compile_s', 0):.0f} s"
  if "exit -11" in run["error"]:
    return "libtpu's compiler crashed (SIGSEGV: stack overflow)"
  return run["error"][:80]


def _num(x):
  return "—" if x is None else f"{x:.3g}"


def _run_row(run, gib):
  spec, memory = run["spec"], run.get("bytes_per_device", {})
  cost = run.get("compiler_estimate", {})
  fits = {True: "yes", False: "no"}.get(run.get("fits"), "?")
  temporaries, planned = gib(memory.get("temporaries")), gib(need_bytes(run))
  if "temporaries_required_bytes" in run:  # refused before the back end: no full plan
    temporaries = f"{gib(run['temporaries_required_bytes'])} (refused)"
    planned = "refused"
  return (f"| {spec['model']} | {spec['variant']} | {spec['target']} | {spec['length']:,} | "
          f"{gib(memory.get('arguments'))} | {temporaries} | "
          f"{gib(memory.get('outputs'))} | {gib(memory.get('aliased'))} | "
          f"{gib(memory.get('program'))} | {planned} | {fits} | "
          f"{_num(cost.get('flops'))} | {_num(cost.get('bytes_accessed'))} | "
          f"{_compile_seconds(run)} | {run.get('commit') or '—'} |")


def _compile_seconds(run):
  cpu = run.get("compile_cpu_s")
  return ("—" if cpu is None else f"{cpu:.0f}") + f" / {run.get('compile_s', 0):.0f}"


def plot(result, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(7, 4.5))
  series = {}
  for run in result["runs"]:
    spec = run["spec"]
    if spec["workarounds"] or need_bytes(run) is None:
      continue
    series.setdefault((spec["model"], spec["variant"], spec["target"]), []).append(
        (spec["length"], need_bytes(run) / common.GiB))
  for (model, variant, target), points in sorted(series.items()):
    points.sort()
    ax.plot(*zip(*points), marker="o", label=f"{model}, {variant}, {target}")
  for generation, usable in result["usable_hbm"].items():
    if usable:
      ax.axhline(usable / common.GiB, color="grey", lw=0.8, ls="--")
      ax.text(ax.get_xlim()[0] if ax.lines else 1, usable / common.GiB, f" {generation}",
              va="bottom", fontsize=8, color="grey")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log", base=2)
  ax.set_xlabel("tokens (batch 1)")
  ax.set_ylabel("planned per chip (GiB): TPU compiler")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  out = common.out_dir(args)
  path = out / f"{FILE}.json"
  lengths = (args.length, args.length) if args.workarounds else (args.min_len, args.max_len)
  runs = Runs(path, lengths if args.fresh else None, args.timeout)
  result = {"machine": common.machine_info(common.default_threads()),
            "command": " ".join(["python -m experiments.accelerator_plan"] + argv),
            "chips": [args.slice] if args.slice else args.chips, "longest": [], "usable_hbm": {}, "workarounds": []}
  base = {"quick": args.quick, "layers": args.layers}
  if args.workarounds:
    settings = workaround_settings(args.settings)
    if args.fsdp:
      from reformer_jax.trainer import plan  # pylint: disable=import-outside-toplevel
      chips = math.prod(plan.target_chips(args.workarounds_target))
      if chips != args.fsdp:
        raise SystemExit(f"--fsdp={args.fsdp} must be the {chips} chips of "
                         f"--workarounds_target={args.workarounds_target}")
    mesh = f", fsdp={args.fsdp}" if args.fsdp else ""
    for model in args.models:
      for variant in args.variants:
        for name, forced in settings.items():
          if variant == "float32" and set(forced) <= SIXTEEN_BIT_ONLY and forced:
            continue  # no 16-bit arrays
          run = runs.run(dict(base, model=model, variant=variant, length=args.length,
                              target=args.workarounds_target, workarounds=forced,
                              fsdp=args.fsdp))
          result["workarounds"].append({"name": f"{model}, {variant}{mesh}: {name}",
                                        "run": run})
  else:
    for model in args.models:
      for variant in args.variants:
        row = {"model": model, "variant": variant, "chips": {}}
        for generation in [args.slice] if args.slice else args.chips:
          spec = dict(base, model=model, variant=variant, target=CHIPS.get(generation, generation))
          if args.slice:
            from reformer_jax.trainer import plan  # pylint: disable=import-outside-toplevel
            spec["sequence"] = math.prod(plan.target_chips(args.slice))
          best = longest_fitting(runs, spec, args.min_len, args.max_len)
          row["chips"][generation] = {"length": best, "need_bytes": (
              None if best is None else need_bytes(runs.run(dict(spec, length=best))))}
        result["longest"].append(row)
  result["runs"] = list(runs.records.values())
  for run in result["runs"]:
    hbm = run.get("hbm") or {}
    if hbm.get("generation"):
      result["usable_hbm"][hbm["generation"]] = hbm.get("usable_bytes")
  blog = [r for r in result["runs"] if r["spec"]["length"] == BLOG_TOKENS
          and r["spec"]["model"] == "crime_and_punishment" and not r["spec"]["workarounds"]
          and need_bytes(r) is not None]
  result["blog_comparison"] = [
      {"target": r["spec"]["target"], "variant": r["spec"]["variant"],
       "planned_bytes": need_bytes(r), "blog_bytes": BLOG_BYTES} for r in blog]
  common.write_json(path, result)
  (out / f"{FILE}.md").write_text(markdown(result))
  if any(need_bytes(r) is not None for r in result["runs"]):
    plot(result, out / f"{FILE}.png")
  print(f"wrote {path}, .md and .png")
  return result


if __name__ == "__main__":
  if not common.worker_main(sys.argv, worker):
    main()
