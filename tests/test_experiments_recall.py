"""The quick mode of experiments/recall.py: MQAR trained by the trainer, its table, plot and
memory; a variant over the memory limit is reported, not trained (the full study's variants
share this code path; only their bindings differ)."""
import json
import math

import pytest

from experiments import recall


def test_recall_quick_trains_reports_and_leaves_out_what_does_not_fit(tmp_path):
  recall.main(["--quick", "--variants", "local", "--eval_lengths", "16", "--out", str(tmp_path),
               "--workdir_root", str(tmp_path / "work")])
  result = json.loads((tmp_path / "recall.json").read_text())
  assert result["quick"] and result["run"]["power_a"] == 1.0
  (cell,) = result["cells"].values()
  assert (cell["length"], cell["pairs"]) == (32, 4)
  # The variant's own settings, as trained (not the gin file's default attention, LSH).
  assert result["settings"]["32x4"]["local"]["model"]["attention_types"] == ["local"]
  run = cell["runs"]["local"]["0"]
  assert run["summary"]["task"] == "mqar" and run["summary"]["step"] == 2
  assert 0 <= run["accuracy"] <= 1 and run["step_time_s"] > 0
  row = cell["rows"]["local"]
  assert row["trained"] and row["accuracy"] == run["accuracy"] and row["peak_bytes"] > 0
  at = run["at_length"]["16"]["accuracy"]      # the trained model evaluated at 16 tokens
  assert 0 <= at <= 1 and row["at_length"] == {"16": {"accuracy": [at]}}
  assert "| Local |" in (tmp_path / "recall.md").read_text()
  assert "| Local | 16 |" in (tmp_path / "recall.md").read_text()
  assert (tmp_path / "recall.png").stat().st_size > 1000
  recall.main(["--quick", "--variants", "local", "--memory_only", "--out",
               str(tmp_path / "none"), "--workdir_root", str(tmp_path / "work")])
  result = json.loads((tmp_path / "none" / "recall.json").read_text())
  (cell,) = result["cells"].values()
  assert cell["runs"]["local"] == {} and not cell["rows"]["local"]["trained"]
  assert math.isclose(cell["rows"]["local"]["peak_bytes"], row["peak_bytes"])
  assert "| Local | not trained (--memory_only)" in (tmp_path / "none" / "recall.md").read_text()
  result["run"].update(memory_only=False, max_train_gib=0.5)   # over the limit
  assert "| Local | does not fit (> 0.5 GiB)" in recall.markdown(result)

@pytest.mark.parametrize("argv, message", [
    (["--lengths", "64", "--pairs", "32"], "length >= 4p"),
    (["--variants", "lsh0"], "subset of full,local,lsh1"),
    (["--variants", "lsh16,fast"], "got ['fast']"),
    (["--gin_bindings", "N_HASHES=16"], "choose it with --variants"),
    (["--gin_bindings", "ATTENTION=('lsh',)"], "the variant sets ATTENTION"),
])
def test_bad_arguments_name_the_fix(argv, message, capsys):
  with pytest.raises(SystemExit):
    recall.parse_args(argv)
  assert message in capsys.readouterr().err


def test_the_variants_differ_only_in_attention_and_rounds():
  for name, (_, bindings, n_hashes) in recall.VARIANTS.items():
    assert all(b.startswith(("ATTENTION=", "N_HASHES=")) for b in bindings)
    assert (n_hashes is None) == ("lsh" not in bindings[0]), name
  assert recall.variant_spec("lsh16") == ("LSH-16", ["ATTENTION=('lsh',)", "N_HASHES=16"], 16)

