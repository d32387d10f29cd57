"""Fault soak: SIGKILLs `python -m reformer_jax.train` at seeded random moments and resumes.

A tiny model trains from the command line; each run is killed (SIGKILL, no clean-up) at a
moment drawn from a seeded generator: inside a training step, inside a checkpoint save
(once orbax's temporary directory appears) or inside an evaluation (once the train line of
an evaluated step is logged), then the same command resumes it. After the last kill the run
finishes, and is compared with an uninterrupted run of the same command:

* the final parameters are equal bit for bit;
* `metrics.jsonl` holds each (step, split) once, with the same values bit for bit
  (timings aside);
* every checkpoint left restores (read with orbax directly), none was moved aside as
  unreadable, no run warned about one.

  python -m experiments.fault_soak [--kills 30] [--seed 0] [--steps 24] [--out DIR]

prints the counts (kills of each kind, how many landed inside a save or an evaluation,
runs, seconds) as JSON; `tests/test_faults.py` runs a few kills of it.
"""
import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Sequence

import numpy as np

if __package__ in (None, ""):  # run as `python experiments/fault_soak.py`
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # pylint: disable=wrong-import-position

KINDS = ("step", "save", "eval")
EVAL_EVERY = 4
# configs/quickstart.gin shrunk to one local-attention layer of width 32, length 32.
BINDINGS = ("SEQ_LEN=32", "BATCH_SIZE=4", "D_MODEL=32", "N_LAYERS=1",
            "ReformerConfig.attention_types=('local',)", "ReformerConfig.d_ff=64",
            "ReformerConfig.d_head=16", "ReformerConfig.local_chunk_len=8",
            "Experiment.log_every=1", f"Experiment.eval_every={EVAL_EVERY}", "Experiment.eval_batches=1",
            "Experiment.checkpoint_every=3", "Experiment.keep_checkpoints=2",
            "Experiment.sample_length=0")
TIMEOUT = 300.


def command(workdir: pathlib.Path, steps: int) -> List[str]:
  return [sys.executable, "-m", "reformer_jax.train", "--gin_file=configs/quickstart.gin",
          *[f"--gin_bindings={b}" for b in BINDINGS + (f"TRAIN_STEPS={steps}",)],
          f"--workdir={workdir}"]


def environment(cache_dir: pathlib.Path) -> Dict[str, str]:
  """CPU, one compilation cache for every run (start-up is most of a run's time)."""
  return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
              PYTHONPATH=str(common.REPO))


def _metrics(workdir: pathlib.Path) -> List[dict]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except ValueError:  # a line being written
      pass
  return rows


def _in_save(workdir: pathlib.Path) -> bool:
  checkpoints = workdir / "checkpoints"
  try:
    return any(".orbax-checkpoint-tmp" in name for name in os.listdir(checkpoints))
  except FileNotFoundError:
    return False


def _wait_for(proc, condition, what: str):
  deadline = time.monotonic() + TIMEOUT
  while not condition():
    if proc.poll() is not None:
      return False  # it finished (or failed) first
    if time.monotonic() > deadline:
      proc.kill()
      raise TimeoutError(f"no {what} within {TIMEOUT:.0f} s")
    time.sleep(0.001)
  return True


def kill_once(workdir: pathlib.Path, steps: int, env, kind: str, rng) -> Dict[str, Any]:
  """Starts (or resumes) the run and SIGKILLs it at a moment of `kind`.

  Returns:
    {'kind', 'killed' (False: the run ended first), 'inside' (the kill landed inside the
    save / evaluation it aimed at), 'stderr'}.
  """
  logged = {(r["step"], r["split"]) for r in _metrics(workdir)}
  start = max([s for s, split in logged if split == "train"], default=0)
  proc = subprocess.Popen(command(workdir, steps), cwd=common.REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  trained = lambda: [r["step"] for r in _metrics(workdir)
                     if r["split"] == "train" and r["step"] > start]
  if kind not in KINDS:
    raise ValueError(f"kill kind {kind!r}: use one of {KINDS}.")
  if kind == "step":
    after = int(rng.integers(1, 4))
    ready = _wait_for(proc, lambda: len(trained()) >= after, "train line")
    time.sleep(rng.uniform(0., 0.05))
  elif kind == "save":
    ready = _wait_for(proc, lambda: _in_save(workdir), "checkpoint save")
    time.sleep(rng.uniform(0., 0.005))
  else:
    due = lambda: [s for s in trained() if s % EVAL_EVERY == 0]
    ready = _wait_for(proc, lambda: bool(due()), "evaluated step")
    time.sleep(rng.uniform(0., 0.02))
  target = due()[0] if kind == "eval" and ready else None
  killed = ready and proc.poll() is None
  if killed:
    proc.send_signal(signal.SIGKILL)
  _, err = proc.communicate(timeout=TIMEOUT)
  if not killed and proc.returncode != 0:
    raise RuntimeError(f"the run failed (status {proc.returncode}):\n{err[-3000:]}")
  inside = False
  if killed and kind == "save":
    inside = _in_save(workdir)
  elif killed and kind == "eval":
    inside = (target, "eval") not in {(r["step"], r["split"]) for r in _metrics(workdir)}
  return {"kind": kind, "killed": killed, "inside": inside, "stderr": err}


def run_to_the_end(workdir: pathlib.Path, steps: int, env) -> str:
  proc = subprocess.run(command(workdir, steps), cwd=common.REPO, env=env,
                        capture_output=True, text=True, timeout=TIMEOUT)
  if proc.returncode != 0:
    raise RuntimeError(f"the run failed (status {proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc.stderr


def final_params(workdir: pathlib.Path):
  """(step, params) of the latest checkpoint."""
  from reformer_jax.trainer import cli  # pylint: disable=import-outside-toplevel
  _, step, params, _ = cli.load_workdir(str(workdir), [])
  return step, params


def checkpoint_problems(workdir: pathlib.Path) -> List[str]:
  """The checkpoints that do not restore, or were moved aside as unreadable (orbax read
  directly, not the trainer's Checkpointer, which would skip them)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  problems = []
  checkpoints = workdir / "checkpoints"
  reader = ocp.StandardCheckpointer()
  for name in sorted(os.listdir(checkpoints)):
    if not name.isdigit():
      problems.append(f"{name}: left in {checkpoints}")
      continue
    for item in ("params", "train"):
      try:
        reader.restore(checkpoints / name / item)
      except Exception as e:  # pylint: disable=broad-except
        problems.append(f"{name}/{item}: {type(e).__name__}: {str(e)[:200]}")
  reader.close()
  return problems


def metric_lines(workdir: pathlib.Path) -> Dict[tuple, dict]:
  """{(step, split): values without timings}; raises if a (step, split) repeats."""
  found = {}
  for row in _metrics(workdir):
    key = (row.pop("step"), row.pop("split"))
    if key in found:
      raise AssertionError(f"metrics.jsonl of {workdir} holds {key} twice")
    found[key] = {k: v for k, v in row.items()
                  if k not in ("steps_per_second", "tokens_per_second")}
  return found


def soak(kinds: Sequence[str], seed: int, steps: int, root: pathlib.Path) -> Dict[str, Any]:
  """Runs the uninterrupted run and the run killed once per entry of `kinds` (in that
  order; the moments drawn from `seed`) in `root`, and compares them.

  Returns:
    The counts and comparisons (`check` raises unless nothing was lost); metrics.jsonl
    holding a (step, split) twice raises at once.
  """
  began = time.monotonic()
  env = environment(root / "jax_cache")
  reference, killed = root / "uninterrupted", root / "killed"
  run_to_the_end(reference, steps, env)
  rng = np.random.default_rng(seed)
  kills, runs, warnings = [], 0, []
  for kind in kinds:
    result = kill_once(killed, steps, env, str(kind), rng)
    runs += 1
    warnings += [l for l in result.pop("stderr").splitlines() if "unreadable" in l]
    if result["killed"]:
      kills.append(result)
    else:  # the run ended before the moment came: nothing left to kill
      break
  warnings += [l for l in run_to_the_end(killed, steps, env).splitlines()
               if "unreadable" in l]
  runs += 1
  want_step, want = final_params(reference)
  got_step, got = final_params(killed)
  import jax  # pylint: disable=import-outside-toplevel
  leaves = list(zip(jax.tree.leaves(got), jax.tree.leaves(want)))
  lines = metric_lines(killed)
  return {"kills": {k: sum(r["kind"] == k for r in kills) for k in KINDS},
          "inside": {k: sum(r["inside"] for r in kills if r["kind"] == k)
                     for k in ("save", "eval")},
          "runs": runs, "steps": steps, "seed": seed,
          "final_steps": [got_step, want_step],
          "parameters_equal": all(np.array_equal(np.asarray(a), np.asarray(b))
                                  for a, b in leaves),
          "metrics_equal": lines == metric_lines(reference),
          "train_steps_logged": sorted(s for s, split in lines if split == "train"),
          "checkpoint_problems": (checkpoint_problems(killed) +
                                  checkpoint_problems(reference) + warnings),
          "seconds": round(time.monotonic() - began, 1)}


def check(record: Dict[str, Any]):
  """Raises AssertionError unless the killed run lost nothing."""
  steps = record["steps"]
  assert record["final_steps"] == [steps, steps], record["final_steps"]
  assert record["parameters_equal"], "the final parameters differ"
  assert record["metrics_equal"], "the logged metrics differ"
  assert record["train_steps_logged"] == list(range(1, steps + 1))
  assert not record["checkpoint_problems"], record["checkpoint_problems"]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kills", type=int, default=30)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--steps", type=int, default=24)
  parser.add_argument("--out", default=None, help="write fault_soak.json here")
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory(prefix="fault_soak_") as root:
    kinds = np.random.default_rng(args.seed).choice(KINDS, size=args.kills)
    record = soak(kinds, args.seed + 1, args.steps, pathlib.Path(root))
  print(json.dumps(record))
  check(record)
  if args.out:
    common.write_json(pathlib.Path(args.out) / "fault_soak.json",
                      dict(record, machine=common.machine_info(os.cpu_count())))
  return record


if __name__ == "__main__":
  main()
