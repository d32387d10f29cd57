"""Orbax checkpoints of the train state: params, optimiser state, rng and step.

Orbax writes each step to `<step>.orbax-checkpoint-tmp-*` and renames it when
complete, so a run killed mid-save leaves earlier steps intact (the resumed run
deletes the unfinished temporary directory). A step that
still cannot be read (half copied, corrupt files) is skipped with a warning in
favour of the one before; a resuming run moves it aside to
`<step>.unreadable`, never deletes it. A step that reads fine but holds arrays
shaped differently from the config (a changed model or optimiser) is an error:
nothing is skipped, moved or overwritten. Parameters that are not all finite
are never written.
"""
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
import tqdm

ITEMS = ("params", "train")


class CheckpointMismatch(ValueError):
  """A readable checkpoint whose arrays do not fit the configured train state."""


class NonFiniteParams(ValueError):
  """A save of parameters that are not all finite (refused)."""


class Checkpointer:
  """Saves every `every` steps (and when forced), keeping the last `keep`.

  `clean_up`: delete the temporary directories of saves a killed run left unfinished
  (for the training run; readers such as `evaluate` leave them alone, since a run
  training in the same workdir may be saving).
  """

  def __init__(self, workdir: str, *, every: int = 1000, keep: int = 3,
               clean_up: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.every = every
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=False, create=True,
        cleanup_tmp_directories=clean_up)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={k: ocp.StandardCheckpointHandler() for k in ITEMS})

  def save(self, state, *, force: bool = False) -> bool:
    """Saves `state` (a TrainState) if its step is due or `force`.

    Raises NonFiniteParams, writing nothing, if a parameter is NaN or infinite.
    """
    step = int(state.step)
    if not force and step % self.every:
      return False
    if step in self._manager.all_steps():
      return False
    if not _all_finite(state.params):
      raise NonFiniteParams(
          f"refusing to save step {step} to {self.directory}: its parameters are not "
          f"all finite; the latest checkpoint is step {self.latest_step()}.")
    train = {"opt_state": state.opt_state, "rng": state.rng, "step": state.step}
    self._manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        train=ocp.args.StandardSave(train)))
    self._manager.wait_until_finished()
    return True

  def restore(self, abstract_state, older_opt_state=None) -> Optional[Any]:
    """The latest readable TrainState shaped (and sharded) like `abstract_state`.

    Unreadable newer steps are moved aside (`<step>.unreadable`), so the
    resumed run can save them again. Raises CheckpointMismatch if the latest
    readable step holds differently shaped arrays.

    `older_opt_state`: (abstract, upgrade) of an earlier layout of the optimiser
    state (before the non-finite guard): a step whose optimiser state fits
    `abstract` is read as such and `upgrade(it)` becomes its opt_state.
    """
    def train_item(opt_state):
      return {"opt_state": opt_state, "rng": abstract_state.rng,
              "step": abstract_state.step}

    older = None
    if older_opt_state is not None:
      older = {"train": (train_item(older_opt_state[0]),
                         lambda train: dict(train, opt_state=older_opt_state[1](
                             train["opt_state"])))}
    found = self._restore_latest(
        move_unreadable=True, older=older, params=abstract_state.params,
        train=train_item(abstract_state.opt_state))
    if found is None:
      return None
    return abstract_state.replace(params=found[1]["params"], **found[1]["train"])

  def restore_params(self, abstract_params, advice: Optional[str] = None
                     ) -> Optional[tuple[int, Any]]:
    """(step, params) of the latest readable checkpoint, or None (see `restore`);
    `advice` replaces the mismatch error's advice."""
    found = self._restore_latest(move_unreadable=False, advice=advice, params=abstract_params)
    return None if found is None else (found[0], found[1]["params"])

  def _restore_latest(self, move_unreadable, older=None, advice=None, **abstract):
    """(step, {item: restored}) of the latest readable step, or None. `older`:
    {item: (abstract, upgrade)}, an earlier layout of an item and its conversion;
    `advice`: see `_check_fits`."""
    older = older or {}
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        saved = self._manager.item_metadata(step)
        saved = {k: _shapes(saved[k]) for k in abstract}
        missing = [k for k in abstract if not saved[k]]
        if missing:
          raise FileNotFoundError(f"no readable metadata for {', '.join(missing)}")
      except Exception as e:  # pylint: disable=broad-except
        self._skip(step, e, move_unreadable)
        continue
      wanted, upgrades = dict(abstract), {}
      for name, (tree, upgrade) in older.items():
        if saved[name] != _shapes(wanted[name]) and saved[name] == _shapes(tree):
          wanted[name], upgrades[name] = tree, upgrade
      for name, tree in wanted.items():
        _check_fits(saved[name], _shapes(tree), name, step, self.directory, advice)
      args = ocp.args.Composite(**{k: ocp.args.StandardRestore(v)
                                   for k, v in wanted.items()})
      try:
        restored = self._manager.restore(step, args=args)
      except Exception as e:  # pylint: disable=broad-except
        self._skip(step, e, move_unreadable)
        continue
      restored = {k: restored[k] for k in wanted}
      return step, {k: upgrades[k](v) if k in upgrades else v
                    for k, v in restored.items()}
    return None

  def _skip(self, step: int, error: Exception, move: bool):
    """Warns that `step` is unreadable and, if `move`, renames it out of the way."""
    where = os.path.join(self.directory, str(step))
    message = str(error).strip().splitlines()
    detail = f"{type(error).__name__}: {message[0][:200]}" if message else type(error).__name__
    moved = ""
    primary = jax.process_index() == 0
    if move:
      aside = _unused(f"{where}.unreadable")
      if primary:  # multi-host: one process renames, all wait for it
        os.rename(where, aside)
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"reformer_jax: moved {where} aside")
      self._manager.reload()
      moved = f" Moved to {aside}."
    if primary:
      tqdm.tqdm.write(f"warning: checkpoint step {step} in {self.directory} is "
                      f"incomplete or unreadable ({detail}); using the one before "
                      f"it.{moved}")

  def latest_step(self) -> Optional[int]:
    """The newest saved step (None if there is none)."""
    return self._manager.latest_step()

  def close(self):
    self._manager.close()


def _all_finite(tree) -> bool:
  return all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(x.dtype, jnp.inexact))


def _unused(path: str) -> str:
  """`path`, or `path.1`, `path.2`, ... whichever does not exist yet."""
  candidate, n = path, 0
  while os.path.exists(candidate):
    n += 1
    candidate = f"{path}.{n}"
  return candidate


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _shapes(tree) -> dict:
  """{'a.b.0.c': (shape, dtype name)} of the array leaves of `tree` (arrays,
  ShapeDtypeStructs or orbax metadata), named as orbax names them."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {".".join(_key_name(k) for k in path): (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in leaves if hasattr(leaf, "shape")}


def _check_fits(saved: dict, wanted: dict, item: str, step: int, directory: str,
                advice: Optional[str] = None):
  """Raises CheckpointMismatch naming the arrays that differ, then `advice` (default: how
  to resume)."""
  if saved == wanted:
    return
  lines = []
  for name in sorted(set(saved) | set(wanted)):
    have, want = saved.get(name), wanted.get(name)
    if have != want:
      show = lambda s: "absent" if s is None else f"{list(s[0])} {s[1]}"
      lines.append(f"  {item}.{name}: checkpoint {show(have)}, config {show(want)}")
  more = f"\n  ... and {len(lines) - 8} more" if len(lines) > 8 else ""
  what = ("the model (e.g. D_MODEL, N_LAYERS, d_ff, attention types, the position "
          "table's max_len / axial_shape)" if item == "params" else
          "the optimiser (OptimizerConfig: name, clip_norm, weight decay, ...)")
  advice = advice or (
      f"Use the config it was trained with ({os.path.dirname(directory)}/config.gin; "
      "bindings may change what leaves the parameters alone: N_HASHES, lsh <-> "
      "shared_qk_full, eval settings), or train in a new --workdir. Nothing was "
      "changed in the checkpoint directory.")
  raise CheckpointMismatch(
      f"checkpoint step {step} in {directory} does not fit this config: "
      f"{len(lines)} array(s) differ in {what}:\n" + "\n".join(lines[:8]) + more +
      "\n" + advice)
