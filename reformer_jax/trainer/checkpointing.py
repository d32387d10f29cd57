"""Orbax checkpoints of the train state: params, optimiser state, rng and step.

Orbax writes each step to `<step>.orbax-checkpoint-tmp-*` and renames it when
complete, so a run killed mid-save leaves earlier steps intact; a step that
still cannot be read is skipped (with a warning) in favour of the one before.
"""
import os
from typing import Any, Optional

import orbax.checkpoint as ocp
import tqdm


class Checkpointer:
  """Saves every `every` steps (and when forced), keeping the last `keep`."""

  def __init__(self, workdir: str, *, every: int = 1000, keep: int = 3):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.every = every
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=False, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, state, *, force: bool = False) -> bool:
    """Saves `state` (a TrainState) if its step is due or `force`."""
    step = int(state.step)
    if not force and step % self.every:
      return False
    if step in self._manager.all_steps():
      return False
    train = {"opt_state": state.opt_state, "rng": state.rng, "step": state.step}
    self._manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        train=ocp.args.StandardSave(train)))
    self._manager.wait_until_finished()
    return True

  def restore(self, abstract_state) -> Optional[Any]:
    """The latest readable TrainState shaped (and sharded) like `abstract_state`.

    Unreadable newer steps are deleted, so the resumed run can save them again.
    """
    train = {"opt_state": abstract_state.opt_state, "rng": abstract_state.rng,
             "step": abstract_state.step}
    found = self._restore_latest(
        remove_incomplete=True, params=abstract_state.params, train=train)
    if found is None:
      return None
    return abstract_state.replace(params=found[1].params, **found[1].train)

  def restore_params(self, abstract_params) -> Optional[tuple[int, Any]]:
    """(step, params) of the latest readable checkpoint, or None."""
    found = self._restore_latest(remove_incomplete=False, params=abstract_params)
    return None if found is None else (found[0], found[1].params)

  def _restore_latest(self, remove_incomplete, **abstract):
    args = ocp.args.Composite(**{k: ocp.args.StandardRestore(v)
                                 for k, v in abstract.items()})
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        return step, self._manager.restore(step, args=args)
      except (FileNotFoundError, ValueError, KeyError) as e:
        tqdm.tqdm.write(f"warning: checkpoint step {step} in {self.directory} "
                        f"is incomplete ({type(e).__name__}); using the one "
                        "before it.")
        if remove_incomplete:
          self._manager.delete(step)
    return None

  def close(self):
    self._manager.close()
