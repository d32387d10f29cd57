"""The reformer_jax worker of measured runs: a few train steps of a configured model."""
import time
from typing import Any, Dict

from experiments.common.compiled import build_train_step, memory_stats, train_batch_shapes
from experiments.common.configs import configure_jax, crime_and_punishment, param_count
from experiments.common.runs import rss, timed_steps


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
