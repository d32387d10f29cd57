r"""Memory per device of the enwik8 training step under each device mesh (8 devices).

For every mesh of `MESHES` it compiles the trainer's own train step (forward, backward, Adam
update, state donated; `configs/enwik8.gin`'s model at a short length, one sequence per
batch shard) over 8 CPU devices and records: the train state's bytes per device (each
array's shard), XLA's compiled memory analysis per device (peak = argument + temp + output -
alias), and the collectives of the compiled program with the bytes each moves per device
(read from its HLO: the result size of each all-gather / all-reduce / reduce-scatter /
all-to-all / collective-permute; an operation inside a loop counted once per iteration of
the loops around it when their trip counts are known). Writes JSON and the Markdown table of
docs/scaling.md. Run it as a program: it sets
XLA_FLAGS=--xla_force_host_platform_device_count=8 before JAX starts.

`--target=v5e:2x4` compiles the same steps with the TPU compiler for the 8 chips of that
topology instead (libtpu, compile only: `trainer/plan.py`), whose pipeline runs passes that
XLA:CPU does not (an all-reduce whose result each device slices becomes a reduce-scatter,
collectives overlap); results go to mesh_memory[_scan]_<target>.*.

  python -m experiments.mesh_memory                       # enwik8, 6 meshes (minutes)
  python -m experiments.mesh_memory --scan_layers --meshes data=8,fsdp=8
  python -m experiments.mesh_memory --target=v5e:2x4 --meshes data=8,fsdp=8
  python -m experiments.mesh_memory --quick --out /tmp/q  # tiny model, 2 meshes
"""
import argparse
import os
import pathlib
import re
import sys

DEVICES = 8
if __name__ == "__main__":  # before JAX starts; importing the module changes nothing
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={DEVICES}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

if __package__ in (None, ""):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402  pylint: disable=wrong-import-position

MESHES = {"data=8": dict(data=8), "fsdp=8": dict(data=1, fsdp=8),
          "tensor=8": dict(data=1, tensor=8), "data=2 x fsdp=4": dict(data=2, fsdp=4),
          "fsdp=4 x tensor=2": dict(data=1, fsdp=4, tensor=2),
          "data=2 x fsdp=2 x tensor=2": dict(data=2, fsdp=2, tensor=2)}
QUICK_MESHES = ("data=8", "fsdp=8")
LENGTH = 2048
# Goals of the issue: fsdp=8 holds 1/8 of the state (within 5%) and its compiled peak is at
# least 5x below data=8's.
STATE_FRACTION_TOLERANCE = 1.05
PEAK_RATIO_GOAL = 5.0

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
               "collective-permute")
_BYTES = {"f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "pred": 1, "s8": 1, "u8": 1,
          "f64": 8, "s64": 8, "u64": 8}


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--length", type=int, default=LENGTH)
  parser.add_argument("--meshes", default=",".join(MESHES),
                      help="comma-separated names of MESHES to measure")
  parser.add_argument("--scan_layers", action="store_true",
                      help="ReformerConfig.scan_layers=True (the layer cycles as one "
                           "lax.scan); results go to mesh_memory_scan.*")
  parser.add_argument("--quick", action="store_true",
                      help="a tiny model on two meshes (smoke test)")
  parser.add_argument("--target", default=None,
                      help="a TPU topology of 8 chips (e.g. v5e:2x4): compile with the TPU "
                           "compiler for its chips instead of 8 CPU devices")
  common.add_out_argument(parser)
  return parser.parse_args(argv)


def _shape_bytes(text: str) -> int:
  """Bytes of an HLO result type such as 'f32[8,1024]{1,0}' or a tuple of them."""
  total = 0
  for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", text):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * _BYTES.get(dtype, 4)
  return total


def collective_bytes(hlo: str) -> dict:
  """{collective kind: {'count', 'bytes'}} per device of the compiled program `hlo`: each
  operation's result bytes, times the trip counts of the while loops that run it."""
  computations, current = {}, None
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) ", line)
    if head and line.rstrip().endswith("{"):
      current = computations.setdefault(head.group(1), [])
    elif current is not None:
      current.append(line)
  trips = {}   # body computation -> trip count
  calls = {}   # computation -> computations it calls (with multiplicity of trips)
  for name, lines in computations.items():
    for line in lines:
      loop = re.search(r"while\(.*body=%?([\w.\-]+)", line)
      if loop:
        count = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
        trips[loop.group(1)] = int(count.group(1)) if count else 1
      for callee in re.findall(r"(?:body|condition|to_apply|calls|branch_computations)="
                               r"\{?%?([\w.\-]+)", line):
        calls.setdefault(callee, set()).add(name)
  def runs(name, seen=()):
    """How many times computation `name` runs per step (1 for the entry)."""
    callers = calls.get(name)
    if not callers or name in seen:
      return 1
    return trips.get(name, 1) * max(runs(c, seen + (name,)) for c in callers)

  out = {kind: {"count": 0, "bytes": 0} for kind in COLLECTIVES}
  for name, lines in computations.items():
    times = runs(name)
    for line in lines:
      match = re.search(r"=\s*(.*?)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\(", line)
      if match:
        out[match.group(2)]["count"] += times
        out[match.group(2)]["bytes"] += times * _shape_bytes(match.group(1))
  return out


def measure_mesh(config, opt_config, mesh_sizes: dict, length: int, devices) -> dict:
  """The record of one mesh over `devices` (8 CPU devices or a TPU topology's chips)."""
  import jax  # pylint: disable=import-outside-toplevel
  from reformer_jax.layers import xla_cpu  # pylint: disable=import-outside-toplevel
  from reformer_jax.trainer import optim, sharding, steps  # pylint: disable=import-outside-toplevel
  mesh_config = sharding.MeshConfig(**mesh_sizes)
  mesh = sharding.make_mesh(mesh_config, devices)
  sharding.check_model(config, mesh, mesh_config)
  tx, _ = optim.make_optimizer(opt_config, common.TRAIN_STEPS)
  init_state = steps.make_init_state(config, tx, 0, length, mesh)
  state = steps.abstract_state(init_state, mesh)
  batch = common.train_batch_shapes(length, sharding.batch_ways(mesh))
  start = common.cpu_seconds()
  with xla_cpu.compiling_for(devices[0].platform):
    lowered = steps.compile_train_step(config, tx, mesh).lower(state, batch)
  compiled = lowered.compile()
  return {"mesh": sharding.describe(mesh), "batch": sharding.batch_ways(mesh),
          "state_bytes_per_device": sharding.bytes_per_device(state),
          "state_bytes": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)),
          **common.memory_stats(compiled),
          "collectives": collective_bytes(compiled.as_text()),
          "compile_cpu_seconds": common.cpu_seconds() - start}


def compiler_record(target, devices) -> dict:
  """Which compiler planned the programs: XLA:CPU, or the TPU compiler (libtpu) for a
  topology's chips."""
  from reformer_jax.trainer import plan  # pylint: disable=import-outside-toplevel
  if not target:
    return {"name": "XLA:CPU", "devices": f"{DEVICES} CPU devices"}
  return {"name": "TPU compiler (libtpu)", "target": target,
          "device_kind": devices[0].device_kind, "libtpu": plan.libtpu_version()}


def summarize(runs: dict) -> dict:
  data, fsdp = runs.get("data=8"), runs.get("fsdp=8")
  if not (data and fsdp):
    return {}
  fraction = fsdp["state_bytes_per_device"] / fsdp["state_bytes"]
  ratio = data["peak_bytes"] / fsdp["peak_bytes"]
  return {"fsdp8_state_fraction": fraction,
          "fsdp8_state_goal_met": fraction <= STATE_FRACTION_TOLERANCE / DEVICES,
          "data8_over_fsdp8_peak": ratio, "peak_goal_met": ratio >= PEAK_RATIO_GOAL}


def markdown(result: dict) -> str:
  lines = ["| mesh | state / device | compiled peak / device | all-gather | all-reduce | "
           "reduce-scatter | other collectives |", "|---|---:|---:|---:|---:|---:|---:|"]
  for name, run in result["runs"].items():
    c = run["collectives"]
    other = sum(c[k]["bytes"] for k in ("all-to-all", "collective-permute"))
    lines.append(f"| {name} | {common.gib(run['state_bytes_per_device']):.3f} GiB | "
                 f"{common.gib(run['peak_bytes']):.3f} GiB | "
                 + " | ".join(f"{c[k]['bytes'] / common.MiB:.1f} MiB"
                              for k in ("all-gather", "all-reduce", "reduce-scatter"))
                 + f" | {other / common.MiB:.1f} MiB |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  args = parse_args(argv)
  common.configure_jax()
  import jax  # pylint: disable=import-outside-toplevel
  from reformer_jax.trainer import plan  # pylint: disable=import-outside-toplevel
  if args.target:
    try:
      devices = plan.topology_devices(args.target)
    except ValueError as e:
      raise SystemExit(str(e)) from None
  else:
    devices = jax.devices()
  if len(devices) != DEVICES:
    where = f"--target={args.target} has" if args.target else "found"
    raise SystemExit(f"needs {DEVICES} devices, {where} {len(devices)}: "
                     + ("name a topology of 8 chips, e.g. v5e:2x4." if args.target else
                        "run it as its own process (it sets XLA_FLAGS before JAX starts)."))
  changes = {"n_layers": 2, "attention_types": ("local", "lsh"), **common.QUICK_CHANGES,
             "n_heads": 8, "d_head": 4, "d_model": 64, "d_ff": 128, "axial_dims": (32, 32),
             "n_buckets": 8} if args.quick else {}
  config, opt_config = common.enwik8(scan_layers=args.scan_layers, **changes)
  length = 64 if args.quick else args.length
  names = QUICK_MESHES if args.quick else tuple(args.meshes.split(","))
  runs = {}
  for name in names:
    runs[name] = measure_mesh(config, opt_config, MESHES[name], length, devices)
    print(f"{name}: state {common.gib(runs[name]['state_bytes_per_device']):.3f} GiB, "
          f"peak {common.gib(runs[name]['peak_bytes']):.3f} GiB per device", flush=True)
  result = {"model": "enwik8" + (" (quick)" if args.quick else ""), "length": length,
            "devices": DEVICES, "compiler": compiler_record(args.target, devices),
            "config": common.config_record(config), "runs": runs,
            "summary": summarize(runs), "machine": common.machine_info(1)}
  out = common.out_dir(args)
  name = "mesh_memory_scan" if args.scan_layers else "mesh_memory"
  if args.target:
    name += "_" + re.sub(r"\W", "_", args.target)
  common.write_json(out / f"{name}.json", result)
  (out / f"{name}.md").write_text(markdown(result))
  print(result["summary"])
  return result


if __name__ == "__main__":
  main()
