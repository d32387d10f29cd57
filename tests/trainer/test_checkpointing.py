"""Checkpointer: round trip of the whole train state, retention, interrupted saves."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reformer_jax.trainer import optim, sharding
from reformer_jax.trainer.checkpointing import CheckpointMismatch, Checkpointer, NonFiniteParams
from reformer_jax.trainer.steps import TrainState, abstract_state


def _init_fn(value, shape=(3, 2), tx=None):
  tx = tx or optax.adam(1e-3)

  def init():
    params = {"dense": {"kernel": jnp.full(shape, value, jnp.float32)}}
    return TrainState(step=jnp.asarray(int(value), jnp.int32), params=params,
                      opt_state=tx.init(params),
                      rng=jax.random.PRNGKey(int(value)))

  return init


def _save(checkpointer, value, force=True):
  return checkpointer.save(_init_fn(value)(), force=force)


def test_round_trip_restores_params_opt_state_rng_and_step(tmp_path):
  mesh = sharding.make_mesh()
  shapes = abstract_state(_init_fn(0.), mesh)
  checkpointer = Checkpointer(str(tmp_path), every=10, keep=2)
  assert checkpointer.restore(shapes) is None
  assert not _save(checkpointer, 3., force=False)     # 3 % 10: not due
  assert _save(checkpointer, 10., force=False)
  assert _save(checkpointer, 13., force=True)
  restored = checkpointer.restore(shapes)
  expected = _init_fn(13.)()
  assert int(restored.step) == 13
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  step, params = checkpointer.restore_params(shapes.params)
  assert step == 13
  np.testing.assert_array_equal(params["dense"]["kernel"], 13.)
  checkpointer.close()


def test_keeps_the_last_k(tmp_path):
  checkpointer = Checkpointer(str(tmp_path), every=1, keep=2)
  for value in (1., 2., 3.):
    _save(checkpointer, value)
  steps = sorted(int(d) for d in os.listdir(checkpointer.directory) if d.isdigit())
  assert steps == [2, 3]
  checkpointer.close()


def test_interrupted_save_falls_back_to_the_last_complete_step(tmp_path, capsys):
  mesh = sharding.make_mesh()
  shapes = abstract_state(_init_fn(0.), mesh)
  checkpointer = Checkpointer(str(tmp_path), every=1, keep=5)
  _save(checkpointer, 4.)
  checkpointer.close()
  # A kill during the save of step 6 leaves orbax's temporary directory; a
  # copy that stopped half-way leaves a step directory without its metadata.
  directory = checkpointer.directory
  os.makedirs(os.path.join(directory, "6.orbax-checkpoint-tmp-1700000000", "params"))
  os.makedirs(os.path.join(directory, "5", "params"))
  with open(os.path.join(directory, "5", "params", "partial"), "w") as f:
    f.write("half a file")

  tmp = os.path.join(directory, "6.orbax-checkpoint-tmp-1700000000")
  Checkpointer(str(tmp_path), every=1, keep=5).close()  # a reader keeps orbax's tmp dir
  assert os.path.isdir(tmp)
  reader = Checkpointer(str(tmp_path), every=1, keep=5, clean_up=True)
  step, params = reader.restore_params(shapes.params)   # read-only: keeps step 5
  assert step == 4 and os.path.isdir(os.path.join(directory, "5"))
  restored = reader.restore(shapes)                      # resuming: removes step 5
  assert int(restored.step) == 4
  np.testing.assert_array_equal(restored.params["dense"]["kernel"], 4.)
  assert not os.path.exists(os.path.join(directory, "5"))
  assert "checkpoint step 5" in capsys.readouterr().out
  assert _save(reader, 5.)                               # the step can be saved again
  assert not os.path.exists(tmp)                         # the training run's clean-up
  assert int(reader.restore(shapes).step) == 5
  reader.close()


def test_a_changed_model_or_optimiser_is_an_error_and_keeps_every_step(tmp_path):
  mesh = sharding.make_mesh()
  checkpointer = Checkpointer(str(tmp_path), every=1, keep=5)
  _save(checkpointer, 3.)
  _save(checkpointer, 4.)
  directory = checkpointer.directory
  before = sorted(os.listdir(directory))

  wider = _init_fn(0., shape=(4, 2))
  with pytest.raises(CheckpointMismatch, match=r"params\.dense\.kernel: checkpoint \[3, 2\] "
                     r"float32, config \[4, 2\] float32") as error:
    checkpointer.restore(abstract_state(wider, mesh))
  assert "config.gin" in str(error.value) and "new --workdir" in str(error.value)
  with pytest.raises(CheckpointMismatch):
    checkpointer.restore_params(abstract_state(wider, mesh).params)

  # Same params, an optimiser state with another structure.
  clipped = _init_fn(0., tx=optax.chain(optax.clip_by_global_norm(1.),
                                        optax.sgd(1e-3, momentum=0.9)))
  with pytest.raises(CheckpointMismatch, match="optimiser"):
    checkpointer.restore(abstract_state(clipped, mesh))
  assert sorted(os.listdir(directory)) == before
  assert int(checkpointer.restore(abstract_state(_init_fn(0.), mesh)).step) == 4
  checkpointer.close()


def test_a_corrupt_step_is_moved_aside_not_deleted(tmp_path, capsys):
  mesh = sharding.make_mesh()
  shapes = abstract_state(_init_fn(0.), mesh)
  checkpointer = Checkpointer(str(tmp_path), every=1, keep=5)
  _save(checkpointer, 4.)
  _save(checkpointer, 5.)
  checkpointer.close()
  directory = checkpointer.directory
  data_files = [os.path.join(root, name)
                for root, _, names in os.walk(os.path.join(directory, "5", "params"))
                for name in names if os.sep + "d" in root]
  assert data_files
  for path in data_files:  # the arrays' bytes gone, the metadata intact
    with open(path, "wb") as f:
      f.write(b"\0" * 7)

  reader = Checkpointer(str(tmp_path), every=1, keep=5)
  step, _ = reader.restore_params(shapes.params)  # read-only: skips, keeps step 5
  assert step == 4 and os.path.isdir(os.path.join(directory, "5"))
  assert int(reader.restore(shapes).step) == 4
  out = capsys.readouterr().out
  assert "checkpoint step 5" in out and "unreadable" in out
  assert not os.path.exists(os.path.join(directory, "5"))
  assert sorted(os.listdir(os.path.join(directory, "5.unreadable"))) == sorted(
      os.listdir(os.path.join(directory, "4")))
  assert _save(reader, 5.) and int(reader.restore(shapes).step) == 5
  reader.close()


def test_a_checkpoint_from_before_the_non_finite_guard_restores(tmp_path):
  """Runs saved with the unguarded optimiser state (an optax chain) resume: the state is
  read in that layout and wrapped, with no non-finite step counted."""
  mesh = sharding.make_mesh()
  inner_tx = optax.chain(optax.clip_by_global_norm(1.), optax.adam(1e-3))
  checkpointer = Checkpointer(str(tmp_path), every=1, keep=5)
  old = _init_fn(7., tx=inner_tx)()
  checkpointer.save(old, force=True)
  guarded = abstract_state(_init_fn(0., tx=optax.apply_if_finite(inner_tx, 5)), mesh)
  with pytest.raises(CheckpointMismatch, match="optimiser"):
    checkpointer.restore(guarded)
  restored = checkpointer.restore(guarded, older_opt_state=(
      optim.unguarded(guarded.opt_state), optim.guard))
  assert int(restored.step) == 7
  assert [int(c) for c in optim.nonfinite_counts(restored.opt_state)] == [0, 0]
  for got, want in zip(jax.tree.leaves(optim.unguarded(restored.opt_state)),
                       jax.tree.leaves(old.opt_state)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # A checkpoint in the current layout is read as it is.
  checkpointer.save(restored.replace(step=restored.step + 1), force=True)
  again = checkpointer.restore(guarded, older_opt_state=(
      optim.unguarded(guarded.opt_state), optim.guard))
  assert int(again.step) == 8
  checkpointer.close()


def test_non_finite_params_are_never_saved(tmp_path):
  checkpointer = Checkpointer(str(tmp_path), every=1, keep=5)
  _save(checkpointer, 2.)
  with pytest.raises(NonFiniteParams, match="refusing to save step 3.*latest checkpoint is "
                     "step 2"):
    state = _init_fn(3.)()
    checkpointer.save(state.replace(params={"dense": {"kernel": state.params["dense"][
        "kernel"].at[1, 0].set(jnp.inf)}}), force=True)
  assert checkpointer.latest_step() == 2 and sorted(os.listdir(checkpointer.directory)) == ["2"]
  checkpointer.close()
