"""Measured runs in fresh subprocesses, and the process's own RSS and timings.

`measure` runs a script's worker in a fresh process (so its max RSS is its own), pinned to
the same CPUs for every framework; `timed_steps` times a step and records RSS around it.
"""
import ctypes
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Optional, Sequence

# The repository root: workers run there, with it on PYTHONPATH.
REPO = pathlib.Path(__file__).resolve().parents[2]


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

