"""The named mesh and parameter sharding: settings checked up front, every parameter named,
and, on 8 CPU devices (a process of its own, `sharding_worker.py`), meshes that give one
device's loss, gradients and training, and checkpoints that move between meshes."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from reformer_jax.layers import logical_axes
from reformer_jax.models import ReformerConfig
from reformer_jax.trainer import optim, sharding, steps, tasks

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ReformerConfig(vocab_size=16, d_model=16, d_ff=32, n_heads=4, d_head=4, n_layers=2,
                        attention_types=("local", "lsh"), local_chunk_len=4, lsh_chunk_len=4,
                        positional="axial", axial_shape=(4, 4), axial_dims=(8, 8))


@pytest.mark.parametrize("sizes, message", [
    (dict(data=3), "the mesh data=3 x fsdp=1 x sequence=1 x tensor=1 needs 3 devices but "
                   "there are 8; set MeshConfig sizes that multiply to 8"),
    (dict(data=-1, fsdp=3), "needs a multiple of 3 devices but there are 8"),
])
def test_a_mesh_that_does_not_cover_the_devices_is_one_line(sizes, message):
  with pytest.raises(ValueError, match=message) as e:
    sharding.MeshConfig(**sizes).shape(8)
  assert "\n" not in str(e.value)


def test_minus_one_takes_the_devices_the_other_axes_leave():
  assert sharding.MeshConfig().shape(8) == dict(data=8, fsdp=1, sequence=1, tensor=1)
  assert sharding.MeshConfig(data=2, fsdp=-1, tensor=2).shape(8) == dict(
      data=2, fsdp=2, sequence=1, tensor=2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(rules=(("embedding", "fsdp"),)), "unknown logical axis 'embedding'; the "
                                           "parameters' logical axes are embed, heads"),
    (dict(rules=(("embed", "model"),)), r"names unknown mesh axes \['model'\]"),
    (dict(rules=(("embed", "fsdp"), ("embed", None))), "'embed' has two rules"),
    (dict(data=-1, fsdp=-1), "only one axis may be -1"),
    (dict(tensor=0), "MeshConfig.tensor must be a positive int or -1"),
])
def test_bad_settings_are_one_line(kwargs, message):
  with pytest.raises(ValueError, match=message) as e:
    sharding.MeshConfig(**kwargs)
  assert "\n" not in str(e.value)


class _Mesh:
  """Stands for a jax Mesh of the given axis sizes (only `.shape` is read)."""

  def __init__(self, **sizes):
    self.shape = dict(dict(data=1, fsdp=1, sequence=1, tensor=1), **sizes)
    self.devices = np.array([jax.devices()[0]] * int(np.prod(list(self.shape.values()))))


@pytest.mark.parametrize("config, message", [
    (CONFIG.replace(n_heads=3), "ReformerConfig.n_heads=3 must be a multiple of the 2 "
                                "devices that MeshConfig.rules split 'heads' over"),
    (CONFIG.replace(d_ff=33), "ReformerConfig.d_ff=33 must be a multiple of the 2"),
])
def test_heads_and_feed_forward_width_must_split_evenly_over_tensor(config, message):
  with pytest.raises(ValueError, match=message):
    sharding.check_model(config, _Mesh(tensor=2), sharding.MeshConfig(data=4, tensor=2))
  sharding.check_model(CONFIG, _Mesh(tensor=2), sharding.MeshConfig(data=4, tensor=2))


def test_the_batch_must_split_over_data_and_fsdp():
  with pytest.raises(ValueError, match=r"BATCH_SIZE=6 must be a multiple of MeshConfig.data "
                                       r"x MeshConfig.fsdp = 4 \(the batch is split over "
                                       r"them\); use 4 or 8."):
    sharding.check_batch(6, _Mesh(data=2, fsdp=2, tensor=2), "BATCH_SIZE")
  sharding.check_batch(8, _Mesh(data=2, fsdp=2, tensor=2), "BATCH_SIZE")


def test_mesh_spec_follows_the_rules_and_keeps_indivisible_dimensions_whole():
  mesh, rules = _Mesh(fsdp=4, tensor=2), sharding.DEFAULT_RULES
  assert sharding.mesh_spec(("embed", "heads"), (16, 8), mesh, rules) == P("fsdp", "tensor")
  assert sharding.mesh_spec(("vocab", "embed"), (15, 16), mesh, rules) == P(None, "fsdp")
  assert sharding.mesh_spec(("norm",), (16,), mesh, rules) == P(None)
  # A mesh axis serves one dimension only; a size-1 axis is dropped.
  assert sharding.mesh_spec(("embed", "embed"), (16, 16), mesh, rules) == P("fsdp", None)
  assert sharding.mesh_spec(("embed",), (16,), _Mesh(data=8), rules) == P(None)
  both = (("embed", ("fsdp", "tensor")),)
  assert sharding.mesh_spec(("embed",), (16,), mesh, both) == P(("fsdp", "tensor"))


@pytest.mark.parametrize("task, types", [
    (tasks.CausalLM(), ("local", "lsh")), (tasks.CausalLM(), ("full", "shared_qk_full")),
    (tasks.MaskedLM(), ("local", "lsh")), (tasks.Classification(num_labels=3), ("lsh",)),
    (tasks.SpanQA(), ("local",))])
def test_every_parameter_names_one_logical_axis_per_dimension(task, types):
  config = CONFIG.replace(attention_types=types, causal=isinstance(task, tasks.CausalLM)
                          and not isinstance(task, tasks.MaskedLM))
  variables = jax.eval_shape(lambda: steps.init_variables(config, jax.random.PRNGKey(0),
                                                          None, task))
  params = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
  axes = jax.tree_util.tree_flatten_with_path(
      variables[logical_axes.COLLECTION],
      is_leaf=lambda x: isinstance(x, logical_axes.AxisMetadata))[0]
  axes = {tuple(path): leaf.names for path, leaf in axes}
  assert len(axes) == len(params)
  for path, leaf in params:
    assert len(axes[tuple(path)]) == leaf.ndim, path
    assert set(axes[tuple(path)]) <= set(logical_axes.NAMES)


def test_optimiser_moments_are_placed_like_their_parameters():
  mesh = sharding.make_mesh(sharding.MeshConfig(), jax.devices()[:1])
  tx, _ = optim.make_optimizer(optim.OptimizerConfig(), 10)
  specs = {"embed": P("fsdp", None)}
  params = {"w": jax.ShapeDtypeStruct((4, 2), np.float32)}
  shardings = {"w": jax.sharding.NamedSharding(mesh, specs["embed"])}
  state = sharding.like_params(jax.eval_shape(tx.init, params), params, shardings, mesh)
  placed = [s.spec for s in jax.tree.leaves(state)]
  assert placed.count(P("fsdp", None)) == 2          # Adam's mu and nu
  assert all(s in (P("fsdp", None), P()) for s in placed)


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
  """What `sharding_worker.py` measured on 8 CPU devices."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",  # XLA_FLAGS: conftest's, plus 8 devices
             XLA_FLAGS=os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8")
  proc = subprocess.run(
      [sys.executable, str(ROOT / "tests/trainer/sharding_worker.py"),
       str(tmp_path_factory.mktemp("mesh") / "workdir")],
      cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_mesh_gives_the_loss_and_gradients_of_one_device(eight_devices):
  results = eight_devices["gradients"]
  assert sorted(results) == ["encoder", "lm"]
  for model, meshes in results.items():
    assert list(meshes) == (["fsdp=8", "fsdp=8, explicit gathers"] if model == "lm"
                            else ["data=2 x fsdp=2 x tensor=2"])
    for mesh, (loss, grads, state) in meshes.items():
      assert loss <= 1e-5, (model, mesh, loss)
      assert grads <= 1e-4, (model, mesh, grads)
      if mesh.startswith("fsdp=8"):   # all but the norms and position rows is split 8 ways
        assert state < 0.2, (model, state)


def test_a_run_saved_under_fsdp_resumes_under_tensor_parallelism(eight_devices):
  """Two steps under fsdp=8, a checkpoint, a third under data=2 x tensor=4: the loss,
  parameters and optimiser state of the uninterrupted third step."""
  resume = eight_devices["resume"]
  assert resume["step"] == 3
  assert resume["sharded_as_asked"] and resume["tensor_sharded"] > 0
  assert resume["losses"] <= 1e-5
  assert resume["params"] <= 1e-4 and resume["opt_state"] <= 1e-4
