"""Plans a run for an accelerator without one: compiles a step for a TPU topology's chips
(or for this machine's devices) and reports what XLA plans per device.

`--dry_run --target=v5e:2x4` compiles the trainer's own step ahead of time for the chips of
that topology (`jax.experimental.topologies`, through libtpu; the `tpu-plan` extra), lays
the mesh over them (`sharding.make_mesh(exp.mesh, devices)`), and reports the compiled program's
memory per device next to the device's HBM, and XLA's cost analysis (the compiler's
estimate, not a measurement).

Where the numbers come from:
* memory: the compiled program's `memory_analysis()`: arguments, temporaries, outputs,
  aliased (donated) bytes and the program itself, per device;
* usable HBM: the TPU compiler's own figure, the HBM a program may use once the runtime's
  reservation is taken off (read from the error of a probe too large for any chip); the
  chip's HBM from `CHIP_HBM_GIB` (Google Cloud's TPU pages);
* fits: arguments + temporaries + outputs - aliased + program <= usable HBM.
"""
import contextlib
import functools
import importlib.util
import math
import os
import re
import tempfile
from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax.layers import xla_cpu
from reformer_jax.models import decoding, temperature_sampler
from reformer_jax.trainer import optim, sharding, steps

EXTRA = "tpu-plan"
INSTALL = f"pip install -e '.[{EXTRA}]' -c constraints.txt"

# Topology names libtpu accepts (GENERATION:CHIPS); single chips and 1x2 work too.
EXAMPLE_TARGETS = ("v4:2x2x1", "v5e:1x1", "v5e:2x2", "v5e:2x4", "v5p:2x2x1", "v6e:1x1",
                   "v6e:2x2")

# HBM per chip (GiB), Google Cloud's TPU system-architecture pages.
CHIP_HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
CHIP_HBM_SOURCE = "Google Cloud TPU documentation (per chip)"

# JAX's device_kind of each generation's chips.
GENERATIONS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5": "v5p", "TPU v6 lite": "v6e"}

# Generations whose two TensorCores per chip JAX shows as one device only with this chip
# configuration (as on a real v4 host); libtpu's default shows each core.
_MEGACORE = ("v4",)
# libtpu's default host is 2x2x1 chips; smaller topologies name their own bounds.
_HOST_BOUNDS = (2, 2, 1)


def target_chips(target: str) -> Sequence[int]:
  """The chip grid of a topology name: 'v5e:2x4' -> (2, 4)."""
  match = re.fullmatch(r"([A-Za-z0-9_ ]+):(\d+(?:x\d+)*)", target.strip())
  if not match:
    raise ValueError(f"--target={target} is not a TPU topology name; give "
                     f"GENERATION:CHIPS, e.g. {', '.join(EXAMPLE_TARGETS)}.")
  return tuple(int(n) for n in match.group(2).split("x"))


@contextlib.contextmanager
def _captured_stderr():
  """Sends what native code writes to file descriptor 2 to a buffer (yielded as a list that
  receives the text): libtpu prints TPU-initialisation warnings there when it loads on a
  machine without TPUs."""
  text = []
  with tempfile.TemporaryFile(mode="w+b") as buffer:
    saved = os.dup(2)
    os.dup2(buffer.fileno(), 2)
    try:
      yield text
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      buffer.seek(0)
      text.append(buffer.read().decode(errors="replace"))


@functools.lru_cache(maxsize=None)
def topology_devices(target: str) -> tuple:
  """The compile-only devices of a TPU topology (one per chip on v4, v5e, v5p, v6e).

  Raises:
    ValueError (one line): libtpu is missing (names the extra), or libtpu does not know
      the topology (lists names it accepts).
  """
  chips = target_chips(target)
  if importlib.util.find_spec("libtpu") is None:
    raise ValueError(f"--target={target} compiles for TPU chips through libtpu, which is not "
                     f"installed; install the planning extra: {INSTALL}")
  # Only compiling here, no TPU is touched: let plans run side by side (libtpu otherwise
  # takes a lockfile that makes a second process fail to load it).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  generation = target.split(":")[0].strip()
  options = {"platform": "tpu"}
  if generation in _MEGACORE:
    options["chip_config_name"] = "megacore"
  padded = tuple(chips) + (1,) * (3 - len(chips))
  if any(n < h for n, h in zip(padded, _HOST_BOUNDS)):
    options["chips_per_host_bounds"] = tuple(min(n, h) for n, h in zip(padded, _HOST_BOUNDS))
  try:
    with _captured_stderr():
      topology = topologies.get_topology_desc(topology_name=target, **options)
  except Exception as e:  # pylint: disable=broad-except
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"--target={target}: libtpu does not know this topology ({reason}); "
                     f"give GENERATION:CHIPS, e.g. {', '.join(EXAMPLE_TARGETS)}.") from None
  return tuple(topology.devices)


def check_mesh(mesh, devices: Sequence, target: str):
  """Raises ValueError unless `mesh` lays its axes over exactly the target's devices."""
  if mesh.devices.size != len(devices) or set(mesh.devices.flat) != set(devices):
    axes = " x ".join(f"{n}={s}" for n, s in mesh.shape.items())
    raise ValueError(f"the mesh ({axes}: {mesh.devices.size} devices) does not match "
                     f"--target={target}'s {len(devices)} devices; make the mesh's axis "
                     f"sizes multiply to {len(devices)}.")


_UNITS = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
_USABLE_HBM = {}  # device_kind -> bytes or None


def usable_hbm_bytes(device) -> Optional[int]:
  """The HBM (bytes) the TPU compiler lets one program use on `device`, or None if it does
  not say. Read from its out-of-memory error for a probe whose temporaries exceed any chip
  (a fraction of a second; cached per device kind)."""
  if device.device_kind not in _USABLE_HBM:
    _USABLE_HBM[device.device_kind] = _probe_usable_hbm(device)
  return _USABLE_HBM[device.device_kind]


def _probe_usable_hbm(device) -> Optional[int]:
  def probe(x):  # a loop-carried [2^14, 2^24] float32 buffer: 1 TiB of temporaries
    big = jnp.zeros((2 ** 14, 2 ** 24), jnp.float32) + x
    big = jax.lax.fori_loop(0, x.astype(jnp.int32),
                            lambda i, a: a.at[i % 2 ** 14].add(x), big)
    return big[::2 ** 12, :4]

  try:
    jax.jit(probe, device=device).lower(jax.ShapeDtypeStruct((), jnp.float32)).compile()
  except Exception as e:  # pylint: disable=broad-except
    match = re.search(r"available HBM \(([\d.]+)([KMGT])\)", str(e))
    if match:
      return int(float(match.group(1)) * _UNITS[match.group(2)])
  return None


def libtpu_version() -> Optional[str]:
  try:
    from importlib import metadata  # pylint: disable=import-outside-toplevel
    return metadata.version("libtpu")
  except Exception:  # pylint: disable=broad-except
    return None


def memory_record(compiled) -> Dict:
  """Per-device bytes of a compiled program (XLA's memory analysis)."""
  m = compiled.memory_analysis()
  record = {"arguments": int(m.argument_size_in_bytes),
            "temporaries": int(m.temp_size_in_bytes),
            "outputs": int(m.output_size_in_bytes),
            "aliased": int(m.alias_size_in_bytes),
            "program": int(m.generated_code_size_in_bytes)}
  record["peak"] = (record["arguments"] + record["temporaries"] + record["outputs"]
                    - record["aliased"])
  return record


def hbm_record(device) -> Dict:
  """The device's HBM: the chip's (table) and what the TPU compiler lets a program use."""
  generation = GENERATIONS.get(device.device_kind)
  chip = CHIP_HBM_GIB.get(generation)
  usable = usable_hbm_bytes(device)
  return {"generation": generation,
          "chip_bytes": None if chip is None else chip * 2 ** 30,
          "chip_source": CHIP_HBM_SOURCE if chip is not None else None,
          "usable_bytes": usable,
          "usable_source": (f"the TPU compiler (libtpu {libtpu_version()}): HBM one program "
                            "may use after the runtime's reservation"
                            if usable is not None else None)}


def cost_record(compiled) -> Dict:
  """XLA's cost analysis: the compiler's estimate of the step's work, never a measurement."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  seconds = cost.get("optimal_seconds")
  return {"flops": cost.get("flops"), "bytes_accessed": cost.get("bytes accessed"),
          "transcendentals": cost.get("transcendentals"),
          # A negative estimate (the compiler gives one for some loops) is no estimate.
          "seconds": seconds if seconds is not None and seconds > 0 else None,
          "note": "XLA's compile-time estimate per device, not a measurement"}


def report(compiled, devices: Sequence, target: Optional[str], step: str, **fields) -> Dict:
  """The plan's JSON record of `compiled` for `devices` (a TPU topology's or local ones)."""
  device = devices[0]
  record = {"target": target or device.platform, "step": step,
            "device_kind": device.device_kind, "devices": len(devices), **fields,
            "bytes_per_device": memory_record(compiled)}
  if target is not None:
    chips = math.prod(target_chips(target))
    hbm = hbm_record(device)
    need = record["bytes_per_device"]["peak"] + record["bytes_per_device"]["program"]
    record.update(chips=chips, devices_per_chip=len(devices) // chips, hbm=hbm,
                  fits=None if hbm["usable_bytes"] is None else need <= hbm["usable_bytes"],
                  headroom_bytes=(None if hbm["usable_bytes"] is None
                                  else hbm["usable_bytes"] - need))
  record["compiler_estimate"] = cost_record(compiled)
  return record


def plan_devices(target: Optional[str]) -> Sequence:
  """The devices a plan compiles for: the topology's, or this machine's."""
  return topology_devices(target) if target else tuple(jax.devices())


def plan_train(exp, target: Optional[str] = None) -> Dict:
  """Compiles `exp`'s train step (forward, backward, update; state donated) for the target's
  chips (or this machine's devices) without running it; returns `report`'s record."""
  devices = plan_devices(target)
  mesh = _mesh(exp, devices, target)
  sharding.check_batch(exp.micro_batch_size, mesh, "BATCH_SIZE / grad_accum_steps")
  tx, _ = optim.make_optimizer(exp.optimizer, exp.train_steps)
  rules = exp.mesh.rules
  init_state = steps.make_init_state(exp.model, tx, exp.seed, exp.seq_len, mesh, exp.task,
                                     rules)
  state_shapes = steps.abstract_state(init_state, mesh)
  batch = exp.task.batch_shapes((exp.grad_accum_steps, exp.micro_batch_size), exp.seq_len)
  with xla_cpu.compiling_for(devices[0].platform):
    lowered = steps.compile_train_step(exp.model, tx, mesh, exp.task, rules).lower(
        state_shapes, batch)
  compiled = lowered.compile()
  return report(compiled, devices, target, "train", mesh=sharding.describe(mesh),
                seq_len=exp.seq_len, batch_size=exp.batch_size,
                params=_count(state_shapes.params),
                state_bytes_per_device=sharding.bytes_per_device(state_shapes))


def plan_eval(exp, target: Optional[str] = None) -> Dict:
  """Compiles `exp`'s eval step for the target's chips (or this machine's devices)."""
  devices = plan_devices(target)
  mesh = _mesh(exp, devices, target)
  batch_size = exp.eval_batch_size or exp.batch_size
  sharding.check_batch(batch_size, mesh, "Experiment.eval_batch_size")
  params = steps.abstract_params(exp.model, exp.seq_len, mesh, exp.task, exp.mesh.rules)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  with xla_cpu.compiling_for(devices[0].platform):
    lowered = steps.compile_eval_step(exp.model, mesh, exp.task, exp.mesh.rules).lower(
        params, exp.task.batch_shapes((batch_size,), exp.seq_len), key)
  compiled = lowered.compile()
  return report(compiled, devices, target, "eval", mesh=sharding.describe(mesh),
                seq_len=exp.seq_len, batch_size=batch_size, params=_count(params),
                state_bytes_per_device=sharding.bytes_per_device(params))


def _mesh(exp, devices: Sequence, target: Optional[str]):
  """`exp.mesh` laid over `devices`, checked against the model (and the target's chips)."""
  mesh = sharding.make_mesh(exp.mesh, devices)
  if target:
    check_mesh(mesh, devices, target)
  sharding.check_model(exp.model, mesh, exp.mesh)
  return mesh


def plan_sample(exp, target: Optional[str] = None, *, batch: int, prompt_len: int,
                new_tokens: int, use_cache: bool = True,
                sampling: temperature_sampler.Sampling = temperature_sampler.Sampling()) -> Dict:
  """Compiles `sample`'s whole generation (`temperature_sampler.generation_loop`: the
  prefill and `new_tokens` cached steps, or the uncached path) for `batch` prompts of
  `prompt_len` tokens on one chip of a one-chip target (or this machine's first device):
  `sample` runs on one device."""
  if target is not None and math.prod(target_chips(target)) != 1:
    raise ValueError(f"--target={target}: sampling runs on one chip; plan it for a one-chip "
                     f"topology, e.g. --target={target.split(':')[0]}:1x1.")
  devices = plan_devices(target)[:1]
  mesh = sharding.make_mesh(devices=devices)
  total = prompt_len + new_tokens
  config, window = temperature_sampler.loop_setup(exp.model, total, use_cache)
  params = steps.abstract_params(exp.model, exp.seq_len, mesh, exp.task)
  on_device = sharding.replicated(mesh)

  def shape(s, dtype):
    return jax.ShapeDtypeStruct(s, dtype, sharding=on_device)

  rotations = jax.tree.map(lambda x: shape(x.shape, x.dtype),
                           jax.eval_shape(lambda: decoding.draw_lsh_rotations(config, 0)))
  with xla_cpu.compiling_for(devices[0].platform):
    lowered = temperature_sampler.generation_loop.lower(
        params, shape((batch, total), jnp.int32), shape((batch,), jnp.int32),
        shape((2,), jnp.uint32), rotations, config=config, prompt_len=prompt_len,
        window=window, max_new=new_tokens, sampling=sampling, eos_id=None,
        vocab=config.vocab_size, use_cache=use_cache)
  compiled = lowered.compile()
  cache = decoding.cache_bytes(decoding.cache_shapes(config, batch, total)) if use_cache else 0
  return report(compiled, devices, target, "sample", batch_size=batch, prompt_len=prompt_len,
                new_tokens=new_tokens, use_cache=use_cache, cache_bytes=cache,
                params=_count(params))


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
