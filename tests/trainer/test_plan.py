"""Tests for reformer_jax.trainer.plan: a tiny model's steps compiled for a TPU topology's
chips on this CPU machine (libtpu, the `tpu-plan` extra that CI installs), and the one-line
errors of bad targets."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import Mesh

from reformer_jax.models import decoding
from reformer_jax.trainer import gin_setup, plan

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The quickstart model shrunk to 1 local-attention layer of width 32: seconds to compile.
TINY = ["SEQ_LEN=32", "BATCH_SIZE=4", "D_MODEL=32", "N_LAYERS=1",
        "ReformerConfig.attention_types=('local',)", "ReformerConfig.d_ff=64",
        "ReformerConfig.d_head=16", "ReformerConfig.local_chunk_len=8",
        "Experiment.sample_length=0"]
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu not installed (pip install -e '.[tpu-plan]')")


def _experiment(bindings=()):
  gin_setup.parse(["configs/quickstart.gin"], list(TINY) + list(bindings))
  return gin_setup.make_experiment()


@needs_libtpu
def test_train_dry_run_plans_for_a_tpu_topology_quietly(tmp_path):
  """The command line prints one JSON line with the v5e chips' plan, and nothing of libtpu's
  start-up on stderr (JAX_PLATFORMS unset, as for a user)."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  proc = subprocess.run(
      [sys.executable, "-m", "reformer_jax.train", "--gin_file=configs/quickstart.gin",
       f"--workdir={tmp_path / 'w'}", "--dry_run", "--target=v5e:2x2",
       *[f"--gin_bindings={b}" for b in TINY]],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr.strip() == "", proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1, proc.stdout
  record = json.loads(lines[0])
  assert (record["target"], record["chips"], record["devices"], record["device_kind"]) == (
      "v5e:2x2", 4, 4, "TPU v5 lite")
  memory = record["bytes_per_device"]
  assert memory["peak"] == (memory["arguments"] + memory["temporaries"] + memory["outputs"]
                            - memory["aliased"])
  # The replicated train state: parameters, gradients' Adam moments (float32).
  assert memory["arguments"] >= 3 * 4 * record["params"]
  assert record["hbm"]["chip_bytes"] == 16 * 2 ** 30
  # The compiler keeps part of the 16 GiB for its runtime.
  assert 15 * 2 ** 30 < record["hbm"]["usable_bytes"] < 16 * 2 ** 30
  assert record["fits"] is True
  assert record["headroom_bytes"] == (record["hbm"]["usable_bytes"] - memory["peak"]
                                      - memory["program"])
  assert record["compiler_estimate"]["flops"] > 0
  assert not (tmp_path / "w").exists()  # a dry run writes nothing


@needs_libtpu
def test_eval_plan_for_a_single_chip_and_on_this_machine():
  exp = _experiment()
  on_chip = plan.plan_eval(exp, "v5e:1x1")
  here = plan.plan_eval(exp)
  assert (on_chip["chips"], on_chip["devices"], on_chip["step"]) == (1, 1, "eval")
  assert on_chip["fits"] is True
  assert here["target"] == "cpu" and "fits" not in here
  # The same parameters are the eval step's arguments on both.
  assert on_chip["params"] == here["params"]
  assert on_chip["bytes_per_device"]["arguments"] >= 4 * on_chip["params"]


def test_malformed_target_is_one_line():
  with pytest.raises(ValueError, match=r"^--target=v5e is not a TPU topology name; give "
                                       r"GENERATION:CHIPS, e\.g\. .*v5e:2x4") as e:
    plan.target_chips("v5e")
  assert "\n" not in str(e.value)


@needs_libtpu
def test_unknown_topology_is_one_line_listing_accepted_ones():
  with pytest.raises(ValueError) as e:
    plan.topology_devices("v9z:2x2")
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith("--target=v9z:2x2: libtpu does not know this topology")
  assert "v5e:2x2" in message and "v4:2x2x1" in message


def test_missing_libtpu_names_the_extra(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "libtpu" else real(name, *a))
  with pytest.raises(ValueError, match=r"pip install -e '\.\[tpu-plan\]'"):
    plan.topology_devices.__wrapped__("v5e:2x2")


@needs_libtpu
def test_a_mesh_over_other_devices_than_the_target_is_refused():
  devices = plan.topology_devices("v5e:2x4")
  assert len(devices) == 8
  plan.check_mesh(Mesh(np.asarray(devices), ("data",)), devices, "v5e:2x4")
  with pytest.raises(ValueError, match=r"^the mesh \(data=4: 4 devices\) does not match "
                                       r"--target=v5e:2x4's 8 devices; make the mesh's axis "
                                       r"sizes multiply to 8\.$"):
    plan.check_mesh(Mesh(np.asarray(devices[:4]), ("data",)), devices, "v5e:2x4")


@needs_libtpu
def test_batch_that_does_not_split_over_the_chips_is_refused_before_compiling():
  with pytest.raises(ValueError, match=r"BATCH_SIZE / grad_accum_steps=4 must be a multiple "
                                       r"of MeshConfig.data x MeshConfig.fsdp = 8"):
    plan.plan_train(_experiment(), "v5e:2x4")


def test_target_needs_dry_run(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "reformer_jax.train", "--gin_file=configs/quickstart.gin",
       f"--workdir={tmp_path}", "--target=v5e:2x2"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 1
  assert proc.stderr.strip() == ("error: --target=v5e:2x2 plans a run for TPU chips without "
                                 "running it; add --dry_run.")


@needs_libtpu
def test_libtpu_without_a_tpu_stays_quiet_on_the_cpu():
  """The entry points' settings keep libtpu's TPU runtime (and its warnings) out of a CPU
  run when JAX_PLATFORMS is unset."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  code = ("from reformer_jax.trainer import cli; cli.configure(); import jax; "
          "print(jax.default_backend())")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300, check=True)
  assert (proc.stdout.strip(), proc.stderr.strip()) == ("cpu", "")


@needs_libtpu
def test_sample_plan_for_one_chip_holds_the_cache():
  exp = _experiment(["N_LAYERS=2", "ReformerConfig.attention_types=('local', 'lsh')",
                     "ReformerConfig.lsh_chunk_len=8"])
  record = plan.plan_sample(exp, "v5e:1x1", batch=2, prompt_len=8, new_tokens=24)
  assert (record["step"], record["chips"], record["devices"]) == ("sample", 1, 1)
  assert record["fits"] is True
  config = decoding.decoding_config(exp.model, 32)
  assert record["cache_bytes"] == decoding.cache_bytes(decoding.cache_shapes(config, 2, 32)) > 0
  memory = record["bytes_per_device"]
  # The parameters come in; the cache is the loop's carry.
  assert memory["arguments"] >= 4 * record["params"]
  assert memory["temporaries"] + memory["outputs"] >= record["cache_bytes"]
  uncached = plan.plan_sample(exp, None, batch=2, prompt_len=8, new_tokens=24, use_cache=False)
  assert (uncached["target"], uncached["cache_bytes"]) == ("cpu", 0)


def test_sample_plan_refuses_a_target_of_several_chips():
  with pytest.raises(ValueError, match=r"^--target=v5e:2x2: sampling runs on one chip; plan it "
                                       r"for a one-chip topology, e\.g\. --target=v5e:1x1\.$"):
    plan.plan_sample(_experiment(), "v5e:2x2", batch=1, prompt_len=4, new_tokens=4)
