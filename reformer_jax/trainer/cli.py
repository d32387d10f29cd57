"""The command-line edge: JAX settings, logging, and clean errors for user mistakes."""
import importlib.util
import json
import os
import re
import sys
import tokenize
from typing import Optional, Sequence, Tuple

import gin
import jax
from absl import logging

from reformer_jax.trainer import checkpointing, gin_setup, sharding, steps

# A user's mistake (bad binding, length, path, config syntax): no traceback.
USER_ERRORS = (ValueError, OSError, SyntaxError, tokenize.TokenError)


class PeerLost(RuntimeError):
  """A collective of a multi-host run failed: another process died or was killed."""


# A failed runtime call reports its XLA status code first ("UNKNOWN: Gloo all-reduce
# failed: ... Connection reset by peer"). When a peer of a multi-host CPU run dies, jax
# raises it as a JaxRuntimeError from a computation but as a ValueError from a
# device_put or a small jit's dispatch (jax 0.10), so the type alone does not say.
_XLA_STATUS = re.compile(r"^(UNKNOWN|INTERNAL|UNAVAILABLE|ABORTED|CANCELLED|"
                         r"DEADLINE_EXCEEDED|FAILED_PRECONDITION): ")


def is_runtime_failure(error: BaseException) -> bool:
  """Whether `error` is a failed XLA runtime call (in a multi-host run: a lost peer),
  not a user's mistake."""
  return isinstance(error, jax.errors.JaxRuntimeError) or (
      isinstance(error, ValueError) and bool(_XLA_STATUS.match(str(error))))


def peer_lost_message(error: Exception, when: str = "",
                      resume: str = "the latest checkpoint") -> str:
  """The one line a process of a multi-host run prints when a collective failed."""
  first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
  return (f"process {jax.process_index()} of {jax.process_count()} stopped"
          f"{' ' + when if when else ''}: {first}. In a multi-host run this means another "
          f"process died or was killed (its log says why); restart every process with "
          f"the same command to resume from {resume}.")


def _exit_now(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


# XLA:CPU settings for the long-sequence step (crime-and-punishment model, 2-core CPU):
# - the default concurrency-optimised scheduler overlaps independent work at a large cost
#   in memory: the 524,288-token step plans 3.34 GiB with it and 3.08 GiB without
#   (float32; 2.09 vs 1.81 GiB with bfloat16 streams), for a ~2% slower step;
# - YNN (XNNPACK) library fusions are off: XLA's own kernels run the 16,384-token step
#   14% faster (3.88 vs 4.50 s) with the same memory.
# Read from XLA_FLAGS only (not per-compile options); other backends ignore them. An XLA
# that does not know a flag aborts, so they are only set with the jaxlib versions they
# were tested with: XLA_FLAGS_JAXLIB = [first, end).
XLA_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",
             "--xla_cpu_experimental_ynn_fusion_type=")
XLA_FLAGS_JAXLIB = ((0, 10), (0, 11))


def _jaxlib_version() -> Tuple[int, ...]:
  from jaxlib import version  # pylint: disable=import-outside-toplevel
  return tuple(int(p) for p in re.findall(r"\d+", version.__version__)[:3])


def configure():
  """Explicit JAX settings and quiet library logging for the entry points.

  Adds `XLA_FLAGS` to the environment variable of that name (a flag the user set there
  wins; none with a jaxlib outside `XLA_FLAGS_JAXLIB`), so it must run before JAX's
  first computation.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  first, end = XLA_FLAGS_JAXLIB
  for flag in XLA_FLAGS if first <= _jaxlib_version()[:2] < end else ():
    if flag.split("=")[0] not in flags:
      flags = f"{flags} {flag}".strip()
  os.environ["XLA_FLAGS"] = flags
  _leave_out_absent_tpu()
  # Random bits independent of how arrays are sharded: the same dropout and
  # hashes on 1 or 8 devices.
  jax.config.update("jax_threefry_partitionable", True)
  logging.set_verbosity(logging.WARNING)


def _leave_out_absent_tpu():
  """With libtpu installed (the `tpu-plan` extra) on a machine without TPU chips and without
  other accelerator plugins, JAX would start libtpu's TPU runtime at its first computation,
  which prints initialisation warnings and falls back to the CPU: use the CPU directly.
  Planning for a TPU topology (`plan.py`) still loads libtpu's compiler. JAX_PLATFORMS,
  when set, wins."""
  if jax.config.jax_platforms or importlib.util.find_spec("libtpu") is None:
    return
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  from jax._src import hardware_utils  # pylint: disable=import-outside-toplevel
  if (hardware_utils.num_available_tpu_chips_and_device_id()[0] == 0
      and not metadata.entry_points(group="jax_plugins")
      and importlib.util.find_spec("jax_plugins") is None):
    jax.config.update("jax_platforms", "cpu")


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None):
  """Joins a multi-process (multi-host) run: `jax.distributed.initialize`, one process per
  host. Arguments left None come from the cluster (Cloud TPU, SLURM, Open MPI, ...); on CPU
  the processes talk through gloo. Call before JAX's first computation."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def is_primary() -> bool:
  """Whether this is the process that writes files and prints (the first one)."""
  return jax.process_index() == 0


def guarded(main):
  """Wraps an absl main: USER_ERRORS print `error: ...` and exit with status 1;
  Ctrl-C exits with status 130 without a traceback. PeerLost, and in a multi-host run
  any failed computation, prints `error: ...` and exits with status 1 at once: JAX's exit
  handler would wait for a lost process at the distributed shutdown barrier (the
  heartbeat timeout) and then abort."""

  def wrapper(argv):
    if len(argv) > 1:
      raise SystemExit(f"error: unexpected arguments {argv[1:]}; use flags.")
    configure()
    try:
      main()
    except KeyboardInterrupt:
      print("interrupted", file=sys.stderr)
      raise SystemExit(130) from None
    except PeerLost as e:
      _exit_now(str(e))
    except Exception as e:  # pylint: disable=broad-except
      if jax.process_count() > 1 and is_runtime_failure(e):
        _exit_now(peer_lost_message(e))
      if not isinstance(e, USER_ERRORS):
        raise
      # gin appends the chain of configurable calls: noise for the user.
      lines = [l for l in str(e).splitlines()
               if not l.startswith("  In call to configurable")]
      print("error: " + "\n".join(lines), file=sys.stderr)
      raise SystemExit(1) from None

  return wrapper


def print_json(record: dict):
  """Prints `record` as the last line of stdout."""
  print(json.dumps(record), flush=True)


def _bound_task(default: str = "CausalLM") -> str:
  """The configurable name `Experiment.task` is bound to in the parsed config."""
  try:
    value = gin.query_parameter("Experiment.task")
  except ValueError:  # not bound: the default
    return default
  return value.selector.rsplit(".", 1)[-1] if hasattr(value, "selector") else repr(value)


def load_experiment(workdir: str, gin_bindings: Sequence[str]):
  """The Experiment of `workdir/config.gin` + bindings. Raises ValueError if the bindings
  change `Experiment.task` (a checkpoint holds one task's parameters)."""
  config = os.path.join(workdir, "config.gin")
  if not os.path.isfile(config):
    raise FileNotFoundError(
        f"no {config}: --workdir must be a directory written by "
        "`python -m reformer_jax.train`.")
  gin_setup.parse([config])
  trained = _bound_task()
  gin_setup.parse([config], gin_bindings)
  asked = _bound_task()
  if asked != trained:
    raise ValueError(
        f"{workdir} holds a model trained with Experiment.task = @{trained}() (its "
        f"config.gin), but the bindings ask for @{asked}(): its checkpoint has no "
        f"parameters for that task. Drop the Experiment.task binding, or train a {asked} "
        "model first.")
  return gin_setup.make_experiment()


def load_workdir(workdir: str, gin_bindings: Sequence[str], exp=None):
  """Reads `workdir/config.gin` (+ bindings) and its latest checkpoint's params.

  `exp`: the workdir's `load_experiment(...)` result, when already read.

  Returns:
    (experiment, step, params, mesh), params placed on `mesh` (`exp.mesh`) by its rules.
  """
  exp = exp or load_experiment(workdir, gin_bindings)
  mesh = sharding.make_mesh(exp.mesh)
  sharding.check_model(exp.model, mesh, exp.mesh)
  checkpointer = checkpointing.Checkpointer(workdir)
  found = checkpointer.restore_params(
      steps.abstract_params(exp.model, exp.seq_len, mesh, exp.task, exp.mesh.rules))
  checkpointer.close()
  if found is None:
    raise FileNotFoundError(
        f"no checkpoint in {checkpointer.directory}; train first with "
        f"`python -m reformer_jax.train --workdir={workdir} ...`.")
  return (exp, *found, mesh)
