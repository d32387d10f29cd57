r"""Per-device memory of the crime-and-punishment training step with the sequence sharded.

Compiles the trainer's train step (forward, backward, Adam update; batch 1) on a mesh of
`MeshConfig(sequence=D)` fake CPU devices (`parallel.SequenceParallel`) and reads
XLA's memory analysis of the per-device program (peak = argument + temp + output - alias).
Records:

* the goal: 4,194,304 tokens on D = 8 against one device at 524,288 (the same tokens per
  device): ratio <= 1.15 and <= 2.96 GiB (float32);
* at a fixed total length (524,288), the peak per device for D = 1 (the model itself on
  one device), 2, 4, 8: the sequence-sized part (peak minus the peak at
  `--fixed_len` tokens on one device: parameters, gradients, Adam moments, program) is
  compared with the ideal 1/D of one device's (target within 1.2x);
* bytes each collective of the D = 8 step moves (result shapes in the compiled program;
  an exchange inside a loop moves that many bytes per pass).

  python -m experiments.sequence_parallel_memory             # the full set (slow)
  python -m experiments.sequence_parallel_memory --quick     # tiny smoke run
"""
import argparse
import os
import pathlib
import re
import sys
import time

if __package__ in (None, ""):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# Fake CPU devices: must be set before JAX starts.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

from experiments import common  # noqa: E402  pylint: disable=wrong-import-position

TARGET_RATIO = 1.15          # peak(8 x 524,288 on 8 devices) / peak(524,288 on one)
TARGET_BYTES = 2.96 * common.GiB
TARGET_SCALING = 1.2         # sequence part at D devices / (one device's / D)
COLLECTIVES = ("all-gather", "all-to-all", "collective-permute", "all-reduce",
               "reduce-scatter")
_BYTES = {"f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "u16": 2, "s16": 2,
          "pred": 1, "s8": 1, "u8": 1, "f64": 8, "s64": 8, "u64": 8}


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--length", type=int, default=2 ** 19,
                      help="tokens per device of the goal, and the fixed total length")
  parser.add_argument("--devices", default="1,2,4,8")
  parser.add_argument("--fixed_len", type=int, default=4096,
                      help="one device's peak at this length stands for the part that "
                           "does not grow with the sequence")
  parser.add_argument("--quick", action="store_true", help="tiny model and lengths")
  common.add_out_argument(parser)
  args = parser.parse_args(argv)
  if args.quick:
    args.length, args.fixed_len, args.devices = 512, 64, "1,2,8"
  return args


def compile_step(config, opt_config, length, n_devices):
  """The trainer's train step compiled on a mesh of `n_devices` on `sequence`
  (`MeshConfig(sequence=n)`: `SequenceParallel` from 2 devices on)."""
  import jax  # pylint: disable=import-outside-toplevel
  from reformer_jax.trainer import optim, sharding, steps  # pylint: disable=import-outside-toplevel
  mesh = sharding.make_mesh(sharding.MeshConfig(data=1, sequence=n_devices),
                            jax.devices()[:n_devices])
  tx, _ = optim.make_optimizer(opt_config, common.TRAIN_STEPS)
  state = steps.abstract_state(steps.make_init_state(config, tx, 0, length, mesh), mesh)
  return steps.compile_train_step(config, tx, mesh).lower(
      state, common.train_batch_shapes(length)).compile()


def collective_bytes(hlo: str):
  """{op: {'count', 'largest_bytes', 'total_bytes'}} of the program's collectives (the
  bytes of each result; tuples summed)."""
  out = {}
  for line in hlo.splitlines():
    match = re.search(r"=\s*(.*?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(", line)
    if not match:
      continue
    size = sum(_BYTES.get(dtype, 4) * _elements(dims)
               for dtype, dims in re.findall(r"([a-z]+\d*)\[([\d,]*)\]", match.group(1)))
    record = out.setdefault(match.group(2), {"count": 0, "largest_bytes": 0, "total_bytes": 0})
    record["count"] += 1
    record["largest_bytes"] = max(record["largest_bytes"], size)
    record["total_bytes"] += size
  return out


def _elements(dims: str) -> int:
  n = 1
  for d in dims.split(","):
    if d:
      n *= int(d)
  return n


def point(config, opt_config, length, n_devices, hlo=False):
  start = time.process_time()
  compiled = compile_step(config, opt_config, length, n_devices)
  record = {"length": length, "devices": n_devices, **common.memory_stats(compiled),
            "compile_cpu_s": time.process_time() - start}
  if hlo:
    record["collectives"] = collective_bytes(compiled.as_text())
  print(f"L={length:>8} D={n_devices}: peak {record['peak_bytes'] / common.GiB:.3f} GiB per "
        f"device (temp {record['temp_bytes'] / common.GiB:.3f}), compiled in "
        f"{record['compile_cpu_s']:.0f} s CPU", flush=True)
  return record


def markdown(result) -> str:
  goal, fixed = result["goal"], result["fixed_part"]
  lines = ["| tokens | devices (sequence) | peak per device (GiB) | sequence part (GiB) | "
           "ideal 1/D (GiB) | ratio |", "|---|---|---|---|---|---|"]
  for r in result["scaling"]:
    lines.append(f"| {r['length']:,} | {r['devices']} | {r['peak_bytes'] / common.GiB:.3f} | "
                 f"{r['sequence_bytes'] / common.GiB:.3f} | "
                 f"{r['ideal_bytes'] / common.GiB:.3f} | {r['ratio']:.3f} |")
  lines += ["", f"Fixed part: one device's peak at {fixed['length']:,} tokens, "
                f"{fixed['peak_bytes'] / common.GiB:.3f} GiB.", "",
            "| goal | peak per device (GiB) | against one device at "
            f"{goal['base_length']:,} | target |", "|---|---|---|---|",
            f"| {goal['length']:,} tokens on {goal['devices']} devices | "
            f"{goal['peak_bytes'] / common.GiB:.3f} | {goal['ratio']:.3f}x | "
            f"<= {TARGET_RATIO}x and <= {TARGET_BYTES / common.GiB:.2f} GiB: "
            f"{'pass' if goal['pass'] else 'FAIL'} |", "",
            "| collective (D = 8 step) | count | largest (MiB) | all of them, once (MiB) |",
            "|---|---|---|---|"]
  for op, r in sorted(goal["collectives"].items()):
    lines.append(f"| {op} | {r['count']} | {r['largest_bytes'] / common.MiB:.2f} | "
                 f"{r['total_bytes'] / common.MiB:.2f} |")
  return "\n".join(lines)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  common.configure_jax()
  base = dict(common.QUICK_CHANGES, n_layers=2) if args.quick else {}
  config, opt_config = common.crime_and_punishment(**base)
  devices = [int(d) for d in args.devices.split(",")]
  if devices[0] != 1:
    raise SystemExit(f"--devices must start with 1 (the reference), got {args.devices}")
  top = max(devices)
  long_len = top * args.length
  shape = config.resolved_axial_shape
  long_config = config.replace(axial_shape=(shape[0] * top, shape[1]))  # covers long_len
  result = {"machine": common.machine_info(os.cpu_count()), "quick": args.quick,
            "config": common.config_record(config),
            "long_axial_shape": list(long_config.resolved_axial_shape)}
  fixed = point(config, opt_config, args.fixed_len, 1)
  scaling = []
  for n in devices:
    r = point(config, opt_config, args.length, n)
    r["sequence_bytes"] = r["peak_bytes"] - fixed["peak_bytes"]
    one = scaling[0] if scaling else r  # devices[0] is 1
    r["ideal_bytes"] = one["sequence_bytes"] / n
    r["ratio"] = r["sequence_bytes"] / r["ideal_bytes"]
    r["pass"] = bool(r["ratio"] <= TARGET_SCALING)
    scaling.append(r)
  goal = point(long_config, opt_config, long_len, top, hlo=True)
  goal.update(base_length=args.length,
              ratio=goal["peak_bytes"] / scaling[0]["peak_bytes"])
  goal["pass"] = bool(goal["ratio"] <= TARGET_RATIO and goal["peak_bytes"] <= TARGET_BYTES)
  result.update(fixed_part=fixed, scaling=scaling, goal=goal)
  out = common.out_dir(args)
  common.write_json(out / "sequence_parallel_memory.json", result)
  (out / "sequence_parallel_memory.md").write_text(markdown(result) + "\n")
  print(markdown(result))
  return result


if __name__ == "__main__":
  main()
