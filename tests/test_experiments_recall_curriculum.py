"""The quick mode of experiments/recall_curriculum.py: two stages per track through the
trainer, each stage started from the last one's parameters on its own data, the final model
tested on a split no stage uses; finished stages are not trained again."""
import json

import pytest

from experiments import recall_curriculum as rc


def test_quick_curriculum_chains_stages_and_tests_the_final_model(tmp_path):
  root = tmp_path / "work"
  rc.main(["--quick", "--jobs", "1", "--out", str(tmp_path), "--workdir_root", str(root)])
  result = json.loads((tmp_path / "recall_curriculum.json").read_text())
  assert result["tracks"] == ["lsh", "local"] and len(result["curricula"]) == 2
  lsh, local = result["curricula"]
  assert (lsh["track"], lsh["seed"], local["track"]) == ("lsh", 0, "local")
  first, second = lsh["stages"]
  assert [s["variant"] for s in lsh["stages"]] == ["sqfull", "lsh2"]
  assert [s["variant"] for s in local["stages"]] == ["local", "local"]
  # The second stage starts from the first one's workdir, on sequences of its own.
  assert f"Experiment.init_from='{root}/lsh/0/1_16_sqfull'" in second["bindings"]
  assert not any(b.startswith("Experiment.init_from") for b in first["bindings"])
  assert "mqar.seed=1000" in first["bindings"] and "mqar.seed=2000" in second["bindings"]
  assert second["summary"]["step"] == 2 and 0 <= second["accuracy"] <= 1
  # Tested with the rounds it was trained with and more; local attention has no rounds.
  assert list(lsh["test"]) == ["2", "16", "32"] and list(local["test"]) == ["-"]
  assert all(0 <= t["accuracy"] <= 1 for t in [*lsh["test"].values(), *local["test"].values()])
  md = (tmp_path / "recall_curriculum.md").read_text()
  assert "| 32, LSH-2, 2 x 2 |" in md and "| test, 32 rounds |" in md and "| test |" in md
  assert (tmp_path / "recall_curriculum.png").stat().st_size > 1000

  # A finished stage is read back, not trained again; changed settings are refused.
  stage = rc.QUICK_STAGES[1]
  workdir = root / "lsh" / "0" / "2_32_lsh2"
  again = rc.run_stage(stage, second["bindings"], workdir)
  assert again["summary"] == second["summary"] and again["cpu_s"] == second["cpu_s"]
  with pytest.raises(ValueError, match="delete that directory"):
    rc.run_stage(stage, second["bindings"] + ["N_BUCKETS=8"], workdir)


def test_every_stage_trains_on_its_own_data_and_one_position_table():
  for track in rc.TRACKS:
    seeds = set()
    for seed in (0, 1, 2):
      for index, stage in enumerate(rc.FULL_STAGES, start=1):
        bindings = rc.stage_bindings(rc.FULL_RUN, stage, index, track, seed, None)
        (data_seed,) = [b for b in bindings if b.startswith("mqar.seed=")]
        seeds.add(data_seed)
        assert "ReformerConfig.max_len=16384" in bindings
    assert len(seeds) == 3 * len(rc.FULL_STAGES)
    assert f"mqar.seed={rc.TEST_SEED}" not in seeds
  assert rc.FULL_STAGES[-1].length == 16384


@pytest.mark.parametrize("argv, message", [
    (["--tracks", "lsh,full"], "subset of lsh,local"),
    (["--seeds", "-1"], "--seeds"),
    (["--seeds", "a"], "--seeds"),
    (["--jobs", "0"], "--jobs"),
])
def test_bad_arguments_name_the_fix(argv, message, capsys):
  with pytest.raises(SystemExit):
    rc.parse_args(argv)
  assert message in capsys.readouterr().err
