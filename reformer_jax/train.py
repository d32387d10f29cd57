r"""Trains a Reformer described by gin configs: a language model, or the task that
`Experiment.task` names (masked LM, sequence classification, span QA;
`trainer/tasks/`).

  python -m reformer_jax.train --gin_file=configs/quickstart.gin \
      --workdir=workdirs/quickstart [--gin_bindings='TRAIN_STEPS=100'] [--dry_run]
  python -m reformer_jax.train --gin_file=configs/crime_and_punishment.gin \
      --workdir=/tmp/w --dry_run --target=v5e:1x1    # plan for a TPU (trainer/plan.py)

The workdir receives `config.gin` (the operative config), `checkpoints/`,
TensorBoard event files and `metrics.jsonl`. A run on a workdir holding
checkpoints resumes from the latest one; its config.gin is rewritten only once
the checkpoint has been read (a config that does not fit it is an error and
changes nothing). `Experiment.init_from` starts a new workdir from another run's
parameters instead of an initialisation. A dry run writes nothing. The last line printed
is a JSON summary.

A step with a non-finite loss or gradient is skipped (params and optimiser
state unchanged, counted as `nonfinite_steps`) and is never checkpointed; after
`Experiment.max_consecutive_nonfinite` of them in a row the run stops with an
error naming the last good checkpoint.
"""
import math
import os
import signal
import threading
import time
from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import app, flags
from jax.experimental import multihost_utils

from reformer_jax.trainer import checkpointing, cli, gin_setup, optim
from reformer_jax.trainer import plan, sampling, sharding
from reformer_jax.trainer import experiment as experiment_lib
from reformer_jax.trainer import metrics as metrics_lib
from reformer_jax.trainer import steps, tasks


class Diverged(ValueError):
  """Too many consecutive steps with a non-finite loss or gradient."""


def console(message: str):
  """Prints above the progress bar; on the first process only (multi-host)."""
  if cli.is_primary():
    tqdm.tqdm.write(message)


def run(gin_files: Sequence[str], gin_bindings: Sequence[str], workdir: str,
        dry_run: bool = False, target: Optional[str] = None) -> dict:
  """Parses the configs, trains (or dry-runs, for this machine or a TPU `target`); writes
  `workdir/config.gin` once the train state is restored or initialised."""
  gin_setup.parse(gin_files, gin_bindings)
  exp = gin_setup.make_experiment()
  if target:
    return plan.plan_train(exp, target)
  if dry_run:
    return train_and_evaluate(exp, workdir, dry_run=True)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir={workdir} is a file; give a directory (a new one, or "
                     "the workdir of an earlier run to resume it).")
  return train_and_evaluate(exp, workdir, write_config=gin_setup.write_config,
                            names=gin_setup.written_names())


def train_and_evaluate(exp: experiment_lib.Experiment, workdir: str, *,
                       dry_run: bool = False,
                       write_config: Optional[Callable[[str], None]] = None,
                       names: Optional[Mapping[str, str]] = None) -> dict:
  """Trains `exp` in `workdir` (resuming from its checkpoints) and evaluates.

  The data source is built and checked against the run (`names`: the names the
  config sets parameters by, for the errors) before the workdir is created or
  anything is compiled.

  `write_config(workdir)` is called once the train state is restored or
  initialised. The first Ctrl-C stops training after the current step and
  saves it; a second one stops at once. Either way a line names the
  checkpoint to resume from and KeyboardInterrupt goes on. Steps with a
  non-finite loss or gradient are skipped and never saved; after
  `exp.max_consecutive_nonfinite` in a row, Diverged is raised.

  Returns:
    The summary printed as the run's last line (`run_summary`; a language model's: step,
    train_loss, eval_loss, eval_accuracy, eval_bits_per_byte, tokens_per_second,
    unigram_bits_per_byte, nonfinite_steps) or, for a dry run, the mesh, params,
    state_bytes_per_device, peak_bytes and flops_per_step.
  """
  mesh = sharding.make_mesh(exp.mesh)
  sharding.check_model(exp.model, mesh, exp.mesh)
  sharding.check_batch(exp.micro_batch_size, mesh,
                       "BATCH_SIZE / grad_accum_steps")
  eval_batch_size = exp.eval_batch_size or exp.batch_size
  sharding.check_batch(eval_batch_size, mesh, "Experiment.eval_batch_size")
  data = None if dry_run else exp.make_data(names)
  if data is not None and exp.sample_length:
    sampling.check_can_sample(data)
  note = experiment_lib.padding_note(exp.model, exp.seq_len)
  if note:
    console(note)
  tx, schedule = optim.make_optimizer(exp.optimizer, exp.train_steps)
  task = exp.task
  rules = exp.mesh.rules
  init_state = steps.make_init_state(exp.model, tx, exp.seed, exp.seq_len, mesh, task, rules)
  state_shapes = steps.abstract_state(init_state, mesh)
  train_fn = steps.compile_train_step(exp.model, tx, mesh, task, rules)
  if dry_run:
    batch = task.batch_shapes((exp.grad_accum_steps, exp.micro_batch_size), exp.seq_len)
    return {"mesh": sharding.describe(mesh),
            **steps.dry_run_report(train_fn, state_shapes, batch)}
  console(f"mesh: {sharding.describe(mesh)}")

  initial = initial_params(exp, workdir, state_shapes.params)
  baselines = print_baselines(task, data)
  os.makedirs(workdir, exist_ok=True)
  checkpointer = checkpointing.Checkpointer(
      workdir, every=exp.checkpoint_every, keep=exp.keep_checkpoints, clean_up=True)
  state = restore_or_init(checkpointer, state_shapes, init_state, initial)
  if write_config is not None and cli.is_primary():
    write_config(workdir)
  loop = TrainLoop(exp, workdir, mesh, data, state, train_fn, schedule, checkpointer,
                   evaluation(exp, data, mesh, eval_batch_size))
  loop.run()
  state = loop.finish()
  nonfinite_steps = int(optim.nonfinite_counts(state.opt_state)[1])
  if nonfinite_steps:
    console(f"{nonfinite_steps} step(s) had a non-finite loss or gradient and were skipped")
  if exp.sample_length:
    print_sample(exp, state.params, data)
  return run_summary(exp, int(state.step), loop, baselines, nonfinite_steps)


def print_baselines(task: tasks.Task, data) -> dict:
  """Prints what a model that ignores its input scores on `data` (`task.baselines`);
  returns {summary key: value}."""
  baselines = task.baselines(data)
  for baseline in baselines.values():
    if baseline.value is not None:
      console(baseline.note)
  return {key: baseline.value for key, baseline in baselines.items()}


def initial_params(exp: experiment_lib.Experiment, workdir: str, abstract_params):
  """(source, step, params) of `exp.init_from`'s latest checkpoint, placed like
  `abstract_params`, when `workdir` has no checkpoint of its own; else None. Raises, before
  anything is written, if the source has no checkpoint or its parameters do not fit."""
  source = exp.init_from
  own = os.path.join(workdir, "checkpoints")
  if source is None or (os.path.isdir(own) and any(n.isdigit() for n in os.listdir(own))):
    return None
  if os.path.abspath(source) == os.path.abspath(workdir):
    raise ValueError(f"Experiment.init_from={source} is this run's own --workdir; give "
                     "another run's workdir (a rerun here resumes by itself).")
  if not os.path.isdir(os.path.join(source, "checkpoints")):
    raise FileNotFoundError(f"Experiment.init_from={source} holds no checkpoints/: give "
                            "the workdir of a run trained with `python -m reformer_jax.train`.")
  checkpointer = checkpointing.Checkpointer(source)
  found = checkpointer.restore_params(abstract_params, advice=(
      f"Experiment.init_from={source} holds another model: start from a run of the same "
      "model (same D_MODEL, N_LAYERS, vocabulary, attention parameters and position table: "
      "bind ReformerConfig.max_len to the longest length of the curriculum in every run), "
      "or drop Experiment.init_from. Nothing was written."))
  checkpointer.close()
  if found is None:
    raise FileNotFoundError(f"Experiment.init_from={source}: no readable checkpoint in "
                            f"{checkpointer.directory}; train that run first.")
  return (source, *found)


def restore_or_init(checkpointer, state_shapes, init_state, initial=None):
  """The TrainState of the latest checkpoint, read into `state_shapes`' shardings whatever
  mesh saved it (an optimiser state saved without the non-finite guard gains it), else
  `init_state()` (with the parameters of `initial` = (source, step, params) if given);
  prints which."""
  opt_shardings = jax.tree.map(lambda s: s.sharding, state_shapes.opt_state)
  state = checkpointer.restore(state_shapes, older_opt_state=(
      optim.unguarded(state_shapes.opt_state),
      lambda inner: jax.device_put(optim.guard(inner), opt_shardings)))
  if state is None:
    state = init_state()
    if initial is not None:
      source, step, params = initial
      state = state.replace(params=params)
      console(f"starting at step 0 from the parameters of {source} (its step {step})")
    console(f"starting at step 0; checkpoints go to {checkpointer.directory}")
  else:
    console(f"resuming from the checkpoint at step {int(state.step)} in "
            f"{checkpointer.directory}")
  return state


def evaluation(exp: experiment_lib.Experiment, data, mesh,
               batch_size: int) -> Callable[[object], dict]:
  """params -> the task's metrics over the eval split (`exp.eval_batches` batches)."""
  eval_fn = steps.compile_eval_step(exp.model, mesh, exp.task, exp.mesh.rules)
  return lambda params: steps.evaluate(eval_fn, params, data, batch_size=batch_size,
                                       seq_len=exp.seq_len, n_batches=exp.eval_batches,
                                       seed=exp.seed, mesh=mesh, task=exp.task)


class TrainLoop:
  """The steps from the state's step to `exp.train_steps`, in named parts: a train step,
  its logged metrics, an evaluation, a checkpoint (`step`); the ways a run stops early
  (`run`: divergence, a lost host, Ctrl-C); the final evaluation and closing (`finish`).

  Attributes:
    state: the latest TrainState.
    train_metrics, eval_metrics: the last logged ones ({} and None before any).
  """

  def __init__(self, exp: experiment_lib.Experiment, workdir: str, mesh, data, state,
               train_fn, schedule, checkpointer, evaluate: Callable[[object], dict]):
    self.exp, self.data, self.state = exp, data, state
    self.train_fn, self.schedule, self.evaluate = train_fn, schedule, evaluate
    self.checkpointer = checkpointer
    self.start = self.done = int(state.step)
    if self.start >= exp.train_steps:
      console(f"already trained to step {self.start} (TRAIN_STEPS={exp.train_steps}); "
              "evaluating only")
    self.writer = (metrics_lib.MetricWriter(workdir, self.start) if cli.is_primary()
                   else metrics_lib.NoWriter())
    self.batch_sharding = steps.batch_sharding(mesh, 1)
    self.tokens_per_step = exp.batch_size * exp.seq_len
    self.train_metrics, self.eval_metrics = {}, None
    self._sums, self._n_summed = None, 0
    self.bar = tqdm.tqdm(total=exp.train_steps, initial=self.start, unit="step",
                         desc="train", dynamic_ncols=True, mininterval=1.0,
                         disable=not cli.is_primary())
    self.timer = _Timer()

  def run(self):
    """Trains to `exp.train_steps`. Raises Diverged, cli.PeerLost (a multi-host run that
    lost a process) or KeyboardInterrupt (Ctrl-C), each after closing what it can."""
    try:
      with _StopRequest() as stop:
        for step in range(self.start, self.exp.train_steps):
          self.step(step, stop)
    except Diverged:
      self.close()
      raise
    except Exception as e:  # pylint: disable=broad-except
      if jax.process_count() == 1 or not cli.is_runtime_failure(e):
        raise
      self.bar.close()
      self.writer.close()  # not the checkpointer: closing it waits for the other processes
      raise cli.PeerLost(cli.peer_lost_message(
          e, f"at step {self.done}", _latest_checkpoint(self.checkpointer))) from None
    except KeyboardInterrupt:
      where = _latest_checkpoint(self.checkpointer)
      self.close()
      console(f"interrupted at step {int(self.state.step)}; the same command resumes from "
              f"{where}.")
      raise

  def step(self, step: int, stop: "_StopRequest"):
    """Trains step `step`; logs, evaluates and saves when due. A step skipped for a
    non-finite loss or gradient is never saved; the last of too many in a row raises
    Diverged, and a Ctrl-C (`stop`) raises KeyboardInterrupt once the step is saved."""
    self.train_step(step)
    last = self.done == self.exp.train_steps
    # Waits for the step: whether it was skipped decides saving and stopping.
    in_a_row = int(optim.nonfinite_counts(self.state.opt_state)[0])
    diverged = in_a_row >= self.exp.max_consecutive_nonfinite
    if self.done % self.exp.log_every == 0 or last or diverged:
      self.log_train_metrics()
    if diverged:
      raise Diverged(_diverged_message(self.done, in_a_row,
                                       self.exp.max_consecutive_nonfinite,
                                       self.checkpointer))
    if self.done % self.exp.eval_every == 0 or last:
      self.evaluate_now()
    # Read once: a Ctrl-C landing between the save and the check would stop
    # without saving this step.
    stopping = _on_any_process(stop.requested)
    if not in_a_row:  # a skipped step's state is never saved
      self.checkpointer.save(self.state, force=last or stopping)
    if stopping and not last:
      raise KeyboardInterrupt

  def train_step(self, step: int):
    """Runs the update of step `step` and adds its sums to those not yet logged."""
    exp = self.exp
    batch = steps.split_micro(self.data.train_batch(step, exp.batch_size, exp.seq_len),
                              exp.grad_accum_steps)
    self.state, out = self.train_fn(self.state, sharding.put(batch, self.batch_sharding))
    self._sums = out if self._sums is None else jax.tree.map(jnp.add, self._sums, out)
    self._n_summed += 1
    self.done = step + 1
    self.bar.update(1)
    if self.done == self.start + 1:  # the timer leaves out the first step's compilation
      jax.block_until_ready(self.state)
      self.timer.start(self.done)

  def log_train_metrics(self):
    """Writes the task's metrics of the steps since the last log, with the mean gradient
    norm of the applied steps, the skipped steps, the learning rate and the throughput."""
    host = jax.device_get(self._sums)
    metrics = self.exp.task.summarize(host)
    skipped = int(host["nonfinite"])
    applied = self._n_summed - skipped
    metrics["grad_norm"] = float(host["grad_norm"]) / applied if applied else math.nan
    metrics["nonfinite_steps"] = skipped
    self._sums, self._n_summed = None, 0
    metrics["learning_rate"] = float(self.schedule(self.done - 1))
    rate = self.timer.stop(self.done)
    self.timer.start(self.done)
    if rate is not None:
      metrics["steps_per_second"] = rate
      metrics["tokens_per_second"] = rate * self.tokens_per_step
    self.train_metrics = metrics
    self.writer.write(self.done, "train", metrics)
    self.bar.set_postfix(loss=f"{metrics['loss']:.3f}")

  def evaluate_now(self):
    """Evaluates the current params and writes the metrics (not timed as training)."""
    jax.block_until_ready(self.state)
    self.timer.stop(self.done)
    self.eval_metrics = self.evaluate(self.state.params)
    self.writer.write(self.done, "eval", self.eval_metrics)
    self.timer.start(self.done)

  def finish(self):
    """After `run`: evaluates if no evaluation was logged (a run already trained to
    `exp.train_steps`), closes the checkpointer (waiting for its saves) and the writer.
    Returns the final TrainState."""
    self.bar.close()
    if self.eval_metrics is None:
      self.eval_metrics = self.evaluate(self.state.params)
      self.writer.write(int(self.state.step), "eval", self.eval_metrics)
    self.checkpointer.close()
    self.writer.close()
    return self.state

  def close(self):
    self.bar.close()
    self.checkpointer.close()
    self.writer.close()

  def tokens_per_second(self) -> Optional[float]:
    """Training throughput, without the first step's compilation and the evaluations."""
    rate = self.timer.steps_per_second()
    return None if rate is None else rate * self.tokens_per_step


def print_sample(exp: experiment_lib.Experiment, params, data):
  """Prints `exp.sample_length` tokens sampled after `exp.sample_prompt`."""
  text = sampling.generate(exp.model, params, data, exp.sample_prompt,
                           length=exp.sample_length, seed=exp.seed)
  console(f"sample ({exp.sample_length} tokens after the prompt):\n"
          f"{exp.sample_prompt}{text}\n")


def run_summary(exp: experiment_lib.Experiment, step: int, loop: TrainLoop, baselines: dict,
                nonfinite_steps: int) -> dict:
  """The run's JSON summary (the last line printed): step, the task's name
  (`Task.named_in_reports`), train_loss, the last evaluation's metrics as eval_*,
  tokens_per_second, the task's baselines, nonfinite_steps."""
  return {"step": step, **exp.task.name_tag(),
          "train_loss": loop.train_metrics.get("loss"),
          **{f"eval_{k}": v for k, v in loop.eval_metrics.items()},
          "tokens_per_second": loop.tokens_per_second(), **baselines,
          "nonfinite_steps": nonfinite_steps}


def _diverged_message(step: int, in_a_row: int, limit: int, checkpointer) -> str:
  latest = checkpointer.latest_step()
  where = (f"the last good checkpoint is step {latest} in {checkpointer.directory}"
           if latest is not None else "no checkpoint was saved yet")
  return (f"step {step}: {in_a_row} steps in a row ({step - in_a_row + 1}..{step}) had a "
          f"non-finite loss or gradient and were skipped "
          f"(Experiment.max_consecutive_nonfinite={limit}); stopped, {where}. The same "
          "command would repeat these steps: resume with a lower "
          "OptimizerConfig.learning_rate or a longer warmup_steps.")


def _latest_checkpoint(checkpointer) -> str:
  """Where a resumed run would start, as words (never raising: used while failing)."""
  try:
    latest = checkpointer.latest_step()
  except Exception:  # pylint: disable=broad-except
    return f"the latest checkpoint in {checkpointer.directory}"
  return (f"the checkpoint at step {latest} in {checkpointer.directory}"
          if latest is not None else "step 0 (no checkpoint was saved yet)")


def _on_any_process(flag: bool) -> bool:
  """Whether `flag` holds on any process of the run. Multi-host: a collective (each
  process calls it once per step), so a Ctrl-C reaching one process stops them all
  after the same step, and they save it together."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


class _StopRequest:
  """Turns the first SIGINT (Ctrl-C) into a request (`requested`) that the loop
  honours after the step in flight; a second SIGINT interrupts at once."""

  def __enter__(self):
    self.requested, self._previous = False, None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    if self.requested:
      raise KeyboardInterrupt
    self.requested = True
    console("Ctrl-C: stopping after this step and saving it (Ctrl-C again stops at once)")

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)


class _Timer:
  """Training throughput, excluding compilation (the first step) and evaluations."""

  def __init__(self):
    self._mark = None
    self._steps, self._seconds = 0, 0.0

  def start(self, step: int):
    self._mark = (step, time.perf_counter())

  def stop(self, step: int) -> Optional[float]:
    """Ends the interval at `step` (the device must be done with it): steps/s."""
    if self._mark is None or step <= self._mark[0]:
      return None
    steps, seconds = step - self._mark[0], time.perf_counter() - self._mark[1]
    self._mark = None
    self._steps += steps
    self._seconds += seconds
    return steps / seconds

  def steps_per_second(self) -> Optional[float]:
    return self._steps / self._seconds if self._seconds else None


def define_flags():
  """The command line's flags (defined only when run as a program)."""
  flags.DEFINE_multi_string(
      "gin_file", [], "Gin config file (repeatable; later files override "
      "earlier). Looked up as given, then in configs/.")
  flags.DEFINE_multi_string(
      "gin_bindings", [], "Gin binding, e.g. 'SEQ_LEN=4096' (repeatable; "
      "applied after the files).")
  flags.DEFINE_string(
      "workdir", None, "Directory for config.gin, checkpoints and metrics.")
  flags.DEFINE_bool(
      "dry_run", False, "Compile the train step without running it; print "
      "params, peak_bytes and flops_per_step.")
  flags.DEFINE_string(
      "target", None, "With --dry_run: compile the train step for this TPU topology's "
      "chips (e.g. v5e:1x1, v5e:2x4, v4:2x2x1, v5p:2x2x1, v6e:2x2) and print the memory "
      "per chip against its HBM, and XLA's cost estimate (needs the tpu-plan extra).")
  flags.DEFINE_bool(
      "distributed", False, "Multi-host: run this command once per host; the "
      "processes join with jax.distributed.initialize, and only the first "
      "writes metrics, config.gin and the console log. The three flags below "
      "default to what the cluster says (Cloud TPU, SLURM, Open MPI, ...).")
  flags.DEFINE_string(
      "coordinator_address", None, "With --distributed: host:port of process 0.")
  flags.DEFINE_integer(
      "num_processes", None, "With --distributed: the number of processes.")
  flags.DEFINE_integer(
      "process_id", None, "With --distributed: this process's index, 0 .. "
      "num_processes - 1.")


def main():
  args = flags.FLAGS
  if not args.workdir:
    raise ValueError("--workdir is required (where checkpoints, metrics and "
                     "config.gin go).")
  if not args.gin_file:
    raise ValueError("give at least one --gin_file, e.g. "
                     "--gin_file=configs/quickstart.gin.")
  given = [f"--{name}" for name in ("coordinator_address", "num_processes", "process_id")
           if getattr(args, name) is not None]
  if args.target and not args.dry_run:
    raise ValueError(f"--target={args.target} plans a run for TPU chips without running "
                     "it; add --dry_run.")
  if given and not args.distributed:
    raise ValueError(f"{', '.join(given)} only apply with --distributed.")
  if args.distributed:
    cli.initialize_distributed(args.coordinator_address, args.num_processes,
                               args.process_id)
  cli.print_json(run(args.gin_file, args.gin_bindings, args.workdir,
                     args.dry_run, args.target))


if __name__ == "__main__":
  define_flags()
  app.run(cli.guarded(main))
