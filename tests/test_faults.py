"""SIGKILLs of a real training process, resumed: nothing lost (experiments/fault_soak.py).

Each kill costs a process start-up (several seconds), so the suite kills three times,
once of each kind, in a seeded order; `python -m experiments.fault_soak` soaks longer.
"""
import numpy as np

from experiments import fault_soak


def test_sigkills_in_a_step_a_save_and_an_evaluation_lose_nothing(tmp_path):
  kinds = list(np.random.default_rng(0).permutation(fault_soak.KINDS))
  record = fault_soak.soak(kinds, seed=0, steps=12, root=tmp_path)
  assert record["final_steps"] == [12, 12]
  assert record["parameters_equal"], "final parameters differ from the uninterrupted run"
  assert record["metrics_equal"], "metrics.jsonl differs from the uninterrupted run"
  assert record["train_steps_logged"] == list(range(1, 13))    # each step once
  assert record["checkpoint_problems"] == []
  # Each kill landed where it aimed (a save: orbax's temporary directory was left
  # behind; an evaluation: its line was never written).
  assert record["kills"] == {"step": 1, "save": 1, "eval": 1}, record
  assert record["inside"] == {"save": 1, "eval": 1}, record
