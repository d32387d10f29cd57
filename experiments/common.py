"""Shared measuring helpers of the benchmark scripts.

* Configurations: `crime_and_punishment()` reads `configs/crime_and_punishment.gin` (model
  and optimiser) through the trainer's gin setup; `enwik8()` reads `configs/enwik8.gin`.
* Compiled memory: `compile_train_step` compiles the trainer's own train step
  (`reformer_jax.trainer.steps`: forward, backward, Adam update, state donated) for
  abstract shapes; `memory_stats` turns XLA's memory analysis into bytes, with
  `peak = argument + temp + output - alias` (per device; deterministic on CPU).
* Where the peak comes from: `peak_buffers` reads XLA's dump of the compiled program
  (`xla_dump_to`) and lists the buffers live at the peak, with their shapes and the
  source operation that made them.
* Measured runs: `measure` runs a worker in a fresh subprocess (so its max RSS is its
  own), pinned to the same CPUs for every framework; `jax_train_worker` is the JAX one.
* Results go to `RESULTS_DIR` (committed) or `--out`; a `--quick` run without `--out`
  writes to `QUICK_RESULTS_DIR` instead (`add_out_argument`, `out_dir`).
"""
import ctypes
import dataclasses
import json
import math
import os
import pathlib
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "experiments" / "results"
# Where --quick runs write without --out: never over the committed results.
QUICK_RESULTS_DIR = pathlib.Path(tempfile.gettempdir()) / "reformer_jax_quick_results"
MiB = 2 ** 20
GiB = 2 ** 30


# ----------------------------------------------------------------------------------------
# Configurations


def configure_jax():
  """The JAX settings of the trainer's entry points (`reformer_jax.trainer.cli.configure`)."""
  from reformer_jax.trainer import cli  # pylint: disable=import-outside-toplevel
  cli.configure()


def _gin_experiment(gin_file: str):
  from reformer_jax.trainer import gin_setup  # pylint: disable=import-outside-toplevel
  gin_setup.parse([gin_file])
  return gin_setup.make_experiment()


def crime_and_punishment(**changes):
  """(ReformerConfig, OptimizerConfig) of `configs/crime_and_punishment.gin`, with `changes`.

  `changes` are ReformerConfig fields; `dtype` may be given by name ('bfloat16').
  """
  exp = _gin_experiment("crime_and_punishment.gin")
  return exp.model.replace(**_config_changes(changes)), exp.optimizer


def enwik8(**changes):
  """(ReformerConfig, OptimizerConfig) of `configs/enwik8.gin`, with `changes`."""
  exp = _gin_experiment("enwik8.gin")
  return exp.model.replace(**_config_changes(changes)), exp.optimizer


# A tiny version of the crime-and-punishment model for smoke tests (`--quick`): same layer
# pattern and features, small widths and chunks, so compiling takes a few seconds.
QUICK_CHANGES = {"d_model": 32, "d_ff": 64, "d_head": 16, "axial_dims": (8, 24),
                 "lsh_chunk_len": 8, "local_chunk_len": 8, "n_buckets": (4, 8),
                 "ff_chunk_size": 64, "loss_chunk_len": 64}


def _config_changes(changes: Dict[str, Any]) -> Dict[str, Any]:
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  changes = dict(changes)
  for name in ("dtype", "stream_dtype"):
    if isinstance(changes.get(name), str):
      changes[name] = jnp.dtype(changes[name]).type
  for name in ("attention_types", "axial_shape", "axial_dims", "n_buckets"):
    if isinstance(changes.get(name), list):
      changes[name] = tuple(changes[name])
  return changes


def param_count(tree) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------------------
# Compiled memory


def memory_stats(compiled) -> Dict[str, int]:
  """XLA's memory analysis of a compiled function, in bytes per device.

  `peak` = argument + temp + output - alias: what the program needs at once (inputs that
  are donated and aliased to outputs counted once).
  """
  m = compiled.memory_analysis()
  stats = {"argument_bytes": int(m.argument_size_in_bytes),
           "output_bytes": int(m.output_size_in_bytes),
           "alias_bytes": int(m.alias_size_in_bytes),
           "temp_bytes": int(m.temp_size_in_bytes)}
  stats["peak_bytes"] = (stats["argument_bytes"] + stats["temp_bytes"] + stats["output_bytes"]
                         - stats["alias_bytes"])
  return stats


def train_batch_shapes(length: int, batch: int = 1):
  """Abstract `{'inputs', 'targets', 'weights'}` `[1, batch, length]` (one micro-batch)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  shape = (1, batch, length)
  return {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32),
          "targets": jax.ShapeDtypeStruct(shape, jnp.int32),
          "weights": jax.ShapeDtypeStruct(shape, jnp.float32)}


TRAIN_STEPS = 1000  # the schedule's length in the benchmarks' train steps


def build_train_step(config, opt_config, length: int, total_steps: int = TRAIN_STEPS):
  """The trainer's (init_state, jitted train step, abstract state) for `config`."""
  from reformer_jax.trainer import optim, sharding, steps  # pylint: disable=import-outside-toplevel
  mesh = sharding.make_mesh()
  tx, _ = optim.make_optimizer(opt_config, total_steps)
  init_state = steps.make_init_state(config, tx, 0, length, mesh)
  return init_state, steps.compile_train_step(config, tx, mesh), steps.abstract_state(
      init_state, mesh)


def compile_train_step(config, opt_config, length: int, batch: int = 1,
                       dump_dir: Optional[str] = None):
  """Compiles one training step (forward, backward, Adam update) for `[batch, length]`.

  Returns:
    (compiled, abstract state). With `dump_dir`, XLA writes the optimised program, its
    buffer assignment and live ranges there (read them with `peak_buffers`).
  """
  _, train_fn, state_shapes = build_train_step(config, opt_config, length)
  options = {"xla_dump_to": dump_dir} if dump_dir else None
  lowered = train_fn.lower(state_shapes, train_batch_shapes(length, batch))
  return lowered.compile(compiler_options=options), state_shapes


def compile_memory(fn: Callable, *args, dump_dir: Optional[str] = None) -> Dict[str, int]:
  """`memory_stats` of `jax.jit(fn)` compiled for abstract `args`."""
  import jax  # pylint: disable=import-outside-toplevel
  options = {"xla_dump_to": dump_dir} if dump_dir else None
  return memory_stats(jax.jit(fn).lower(*args).compile(compiler_options=options))


# ----------------------------------------------------------------------------------------
# Buffers live at the peak (from an XLA dump)

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_FUSION_KIND = re.compile(r'"kind":"([^"]+)"|kind=(k\w+)')
_LIVE = re.compile(r"^\s+([\w.\-]+)\{([\d,]*)\}:\s+(\d+) bytes")


def _find_dump(dump_dir: str, module: str, suffix: str) -> pathlib.Path:
  files = sorted(pathlib.Path(dump_dir).glob(f"*{module}*{suffix}"),
                 key=lambda p: p.stat().st_size)
  if not files:
    raise FileNotFoundError(f"no *{module}*{suffix} in {dump_dir}: compile with "
                            f"compiler_options={{'xla_dump_to': {dump_dir!r}}}")
  return files[-1]


def _split_shape(text: str):
  """(shape, rest of the line) of an HLO instruction's right-hand side; tuples kept whole."""
  if not text.startswith("("):
    shape, _, rest = text.partition(" ")
    return shape, rest
  depth = 0
  for i, ch in enumerate(text):
    depth += {"(": 1, ")": -1}.get(ch, 0)
    if depth == 0:
      return text[:i + 1], text[i + 1:].lstrip()
  return text, ""


def _tuple_elements(shape: str) -> List[str]:
  """The top-level element shapes of a tuple shape `(a, b, ...)`."""
  inner = re.sub(r"/\*[^*]*\*/", "", shape[1:-1])
  elements, depth, start = [], 0, 0
  for i, ch in enumerate(inner):
    depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(ch, 0)
    if ch == "," and depth == 0:
      elements.append(inner[start:i].strip())
      start = i + 1
  elements.append(inner[start:].strip())
  return elements


def _instructions(hlo_file: pathlib.Path) -> Dict[str, Dict[str, str]]:
  """name -> {'shape', 'opcode', 'op_name'} of every instruction of the optimised HLO."""
  table = {}
  for line in hlo_file.read_text().splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name = m.group(1)
    shape, rest = _split_shape(m.group(2))
    opcode = rest.partition("(")[0].strip()
    if not re.fullmatch(r"[\w\-]+", opcode or "?"):
      continue
    op_name = _OP_NAME.search(line)
    kind = _FUSION_KIND.search(line) if opcode == "fusion" else None
    if kind:
      opcode = f"fusion:{kind.group(1) or kind.group(2)}"
    table[name] = {"shape": re.sub(r"\{[\d,:A-Z()]*\}", "", shape),
                   "opcode": opcode,
                   "op_name": op_name.group(1) if op_name else ""}
  return table


def _short_source(op_name: str) -> str:
  """A compact source label: the op_name without jit/while/closed_call wrappers."""
  parts = [p for p in op_name.split("/")
           if p and not p.startswith(("jit(train_step)", "jit(main)", "while", "body",
                                      "closed_call", "checkpoint", "remat"))]
  return "/".join(parts)


def peak_buffers(dump_dir: str, module: str = "jit_train_step", top: int = 20
                 ) -> Dict[str, Any]:
  """The buffers live at the memory peak of a compiled program, from XLA's dump.

  Returns:
    {'peak_live_bytes': sum of the values live at the peak (values sharing a buffer, as
    in-place loop outputs do, are counted each time), 'peak_instruction': the
    instruction executing then (name, opcode, source op), 'buffers': the `top` largest
    live buffers (bytes, shape, opcode, source op), 'by_shape': bytes grouped by shape
    and opcode (all live buffers), 'by_source': bytes grouped by source op (top 15)}.
  """
  live_file = _find_dump(dump_dir, module, "cpu_after_optimizations-live-range.txt")
  table = _instructions(_find_dump(dump_dir, module, "cpu_after_optimizations.txt"))
  lines = live_file.read_text().splitlines()
  sequence, peak_at, live = {}, None, []
  section = None
  for line in lines:
    if line.strip() == "InstructionSequence:":
      section = "sequence"
      continue
    m = re.match(r"^\s+Live ranges at (\d+) \(peak\):", line)
    if m:
      section, peak_at = "peak", int(m.group(1))
      continue
    if line.startswith("  ") and not line.startswith("    "):
      section = None
    if section == "sequence":
      m = re.match(r"^\s+(\d+):(\S+)", line)
      if m:
        sequence[int(m.group(1))] = m.group(2)
    elif section == "peak":
      m = _LIVE.match(line)
      if m:
        index = tuple(int(i) for i in m.group(2).split(",") if i)
        live.append((m.group(1), index, int(m.group(3))))
  if peak_at is None:
    raise ValueError(f"{live_file} has no 'Live ranges at N (peak)' section")

  def describe(name, index=(), size=None):
    info = table.get(name, {"shape": "?", "opcode": "?", "op_name": ""})
    shape = info["shape"]
    for i in index:
      elements = _tuple_elements(shape) if shape.startswith("(") else []
      shape = elements[i] if i < len(elements) else "?"
    row = {"name": name + (str(list(index)) if index else ""), "shape": shape,
           "opcode": info["opcode"], "source": _short_source(info["op_name"])}
    if size is not None:
      row = {"bytes": size, **row}
    return row

  rows = [describe(name, index, size) for name, index, size in live]
  rows.sort(key=lambda r: -r["bytes"])
  by_shape, by_source = {}, {}
  for r in rows:
    key = f"{r['shape']} {r['opcode']}"
    count, total = by_shape.get(key, (0, 0))
    by_shape[key] = (count + 1, total + r["bytes"])
    by_source[r["source"]] = by_source.get(r["source"], 0) + r["bytes"]
  return {
      "peak_live_bytes": sum(size for _, _, size in live),
      "peak_instruction": describe(sequence.get(peak_at, "?")),
      "buffers": rows[:top],
      "by_shape": [{"shape_opcode": k, "count": c, "bytes": b}
                   for k, (c, b) in sorted(by_shape.items(), key=lambda kv: -kv[1][1])][:top],
      "by_source": [{"source": k, "bytes": b}
                    for k, b in sorted(by_source.items(), key=lambda kv: -kv[1])][:15],
  }


# ----------------------------------------------------------------------------------------
# Measured runs in fresh subprocesses


def default_threads() -> int:
  return len(os.sched_getaffinity(0))


def measure(module: str, spec: Dict[str, Any], threads: int, timeout: float = 3600.,
            xla_flags: Optional[str] = None, platforms: Optional[str] = "cpu"
            ) -> Dict[str, Any]:
  """Runs `python -m experiments.<module> --worker '<spec json>'` in a fresh process.

  The child pins itself to the first `threads` CPUs (its XLA thread pool and torch's
  intra-op threads then have that size; see `worker_main`) and reports its own max RSS. Returns the
  worker's JSON record, or {'error': ...} when it failed (e.g. out of memory).
  `platforms`: the child's `JAX_PLATFORMS` (None: JAX's default backend, e.g. a GPU).
  """
  env = dict(os.environ, OMP_NUM_THREADS=str(threads),
             PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  env.pop("JAX_PLATFORMS", None)
  if platforms is not None:
    env["JAX_PLATFORMS"] = platforms
  if xla_flags is not None:
    env["XLA_FLAGS"] = xla_flags
  spec = dict(spec, threads=threads, cpus=sorted(os.sched_getaffinity(0))[:threads])
  cmd = [sys.executable, "-m", f"experiments.{module}", "--worker", json.dumps(spec)]
  start = time.perf_counter()
  try:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s", "spec": spec}
  wall = time.perf_counter() - start
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode != 0 or not lines:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    reason = "killed (out of memory?)" if proc.returncode in (-9, 137) else " | ".join(tail)
    return {"error": f"exit {proc.returncode}: {reason}", "spec": spec}
  record = json.loads(lines[-1])
  record["process_wall_s"] = wall
  return record


def worker_main(argv: Sequence[str], worker: Callable[[Dict[str, Any]], Dict[str, Any]]
                ) -> bool:
  """If `argv` is `--worker SPEC`, runs `worker(spec)`, prints its JSON record; True.

  The process first pins itself to `spec['cpus']`, before any framework starts its
  thread pools (XLA sizes its pool from the CPUs it may run on).
  """
  if len(argv) < 3 or argv[1] != "--worker":
    return False
  spec = json.loads(argv[2])
  if spec.get("cpus"):
    os.sched_setaffinity(0, spec["cpus"])
  record = worker(spec)
  print(json.dumps(record), flush=True)
  return True


def rss() -> Dict[str, int]:
  """Current and peak resident set size of this process in bytes (/proc/self/status)."""
  values = {}
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(("VmRSS:", "VmHWM:")):
        values[line.split(":")[0]] = int(line.split()[1]) * 1024
  return {"rss_bytes": values["VmRSS"], "peak_rss_bytes": values["VmHWM"]}


def max_rss_bytes() -> int:
  """resource.getrusage max RSS of this process (since start or the last `reset_peak_rss`)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss():
  """Resets the kernel's peak-RSS counter (VmHWM, getrusage max RSS) to the current RSS."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def release_free_memory():
  """Returns freed heap pages to the OS (glibc malloc_trim), so RSS shows live memory."""
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except OSError:
    pass


def cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def timed_steps(step: Callable[[], Any], n_steps: int, warmup: int = 1) -> Dict[str, Any]:
  """Runs `step()` (which must block until done) warmup + n_steps times.

  Returns:
    `step_times_s` and their median `step_time_s`; `cpu_utilisation`: CPU seconds per
    wall second over the timed steps (about the number of busy threads); `max_rss_bytes`:
    the process's max RSS (getrusage) over its whole life, compilation and warmup
    included; `rss_before_timed_bytes`: RSS after the warmup (parameters, optimiser state,
    compiled code, libraries); `steps_max_rss_bytes`: max RSS over the timed steps alone
    (the peak counter is reset after the warmup).
  """
  for _ in range(warmup):
    step()
  process_max = max_rss_bytes()
  release_free_memory()
  reset_peak_rss()
  before = rss()["rss_bytes"]
  times, cpu_start, wall_start = [], cpu_seconds(), time.perf_counter()
  for _ in range(n_steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  cpu = (cpu_seconds() - cpu_start) / (time.perf_counter() - wall_start)
  steps_max = max_rss_bytes()
  return {"step_times_s": times, "step_time_s": statistics.median(times),
          "cpu_utilisation": cpu, "max_rss_bytes": max(process_max, steps_max),
          "rss_before_timed_bytes": before, "steps_max_rss_bytes": steps_max}


def jax_train_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
  """Trains `crime_and_punishment(**spec['config'])` for a few steps on random tokens.

  spec: {'config': ReformerConfig changes, 'length', 'batch' (1), 'steps', 'warmup'}.
  Returns compiled memory, the per-step losses, step times and RSS (see `timed_steps`),
  the device it ran on and, where the backend reports it (GPU, TPU; not CPU), the
  device's `peak_bytes_in_use` over the process's life.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  configure_jax()
  config, opt_config = crime_and_punishment(**spec.get("config", {}))
  length, batch = spec["length"], spec.get("batch", 1)
  record = {"framework": "reformer_jax", "length": length, "batch": batch,
            "threads": spec.get("threads"), "config": spec.get("config", {}),
            "jax_version": jax.__version__, "rss_after_import_bytes": rss()["rss_bytes"]}
  init_state, train_fn, state_shapes = build_train_step(config, opt_config, length)
  start = time.perf_counter()
  compiled = train_fn.lower(state_shapes, train_batch_shapes(length, batch)).compile()
  record["compile_s"] = time.perf_counter() - start
  record.update(memory_stats(compiled))
  state = init_state()
  record["params"] = param_count(state.params)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, config.vocab_size, (1, batch, length + 1), dtype=np.int32)
  data = {"inputs": jax.device_put(tokens[..., :-1]), "targets": jax.device_put(tokens[..., 1:]),
          "weights": jax.device_put(np.ones((1, batch, length), np.float32))}
  losses = []

  def step():
    nonlocal state
    state, out = compiled(state, data)
    losses.append(float(out["loss"]) / float(out["weight"]))

  record.update(timed_steps(step, spec.get("steps", 2), spec.get("warmup", 1)))
  record["losses"] = losses
  record["tokens_per_s"] = batch * length / record["step_time_s"]
  device = jax.local_devices()[0]
  record["device"] = {"platform": device.platform, "kind": device.device_kind,
                      "count": jax.device_count()}
  stats = device.memory_stats() or {}
  record["device_peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
  return record


# ----------------------------------------------------------------------------------------
# Records


def machine_info(threads: int) -> Dict[str, Any]:
  """Where and how the numbers were taken (load average included: the CPU may be shared)."""
  import jax  # pylint: disable=import-outside-toplevel
  info = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": threads,
          "load_average_1_5_15": list(os.getloadavg()), "python": platform.python_version(),
          "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "time": time.strftime("%Y-%m-%d %H:%M:%S")}
  try:
    with open("/proc/meminfo") as f:
      info["mem_total_bytes"] = int(f.readline().split()[1]) * 1024
  except OSError:
    pass
  return info


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


def write_json(path: pathlib.Path, record: Dict[str, Any]) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(record, indent=1, default=_jsonable) + "\n")
  return path


def _jsonable(value):
  if dataclasses.is_dataclass(value):
    return dataclasses.asdict(value)
  return str(value)


def config_record(config) -> Dict[str, Any]:
  """A ReformerConfig as a JSON-friendly dict (dtype by name)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  record = dataclasses.asdict(config)
  record["dtype"] = np.dtype(config.dtype).name
  return record


def gib(n_bytes: Optional[float]) -> Optional[float]:
  return None if n_bytes is None else n_bytes / GiB


def powers_of_two(lo: int, hi: int) -> List[int]:
  """[2^lo, ..., 2^hi]."""
  return [2 ** k for k in range(lo, hi + 1)]
