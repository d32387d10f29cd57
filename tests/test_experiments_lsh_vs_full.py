"""The quick mode of experiments/lsh_vs_full.py: LSH-1 trained by the trainer on the
standard library's text, its table, curve and the every-chunk check (the full study's
variants share this code path; only their bindings differ)."""
import json
import math

from experiments import lsh_vs_full


def test_lsh_vs_full_quick(tmp_path):
  lsh_vs_full.main(["--quick", "--variants", "lsh1", "--out", str(tmp_path),
                    "--workdir_root", str(tmp_path / "work")])
  result = json.loads((tmp_path / "lsh_vs_full.json").read_text())
  assert result["quick"] and result["corpus"]["bytes"]["eval"] > 100_000
  assert result["corpus"]["python"] == result["machine"]["python"]
  (entry,) = result["lengths"].values()
  assert entry["setting"]["seq_len"] == 64 and entry["setting"]["train_steps"] == 4
  run = entry["runs"]["0"]["lsh1"]
  assert [p["step"] for p in run["curve"]] == [2, 4]
  assert all(math.isfinite(p["bits_per_byte"]) and 0 < p["bits_per_byte"] < 9
             for p in run["curve"])
  assert run["bits_per_byte"] == run["curve"][-1]["bits_per_byte"]
  assert run["step_time_s"] > 0 and run["peak_bytes"] > 0 and run["params"] > 0
  assert math.isfinite(run["bits_per_byte_lsh8"])
  # Every chunk in view, LSH is full shared-QK attention: the same bits/byte.
  assert entry["check_every_chunk"]["relative_difference"] < 1e-5
  assert entry["goal"]["met"] is None                       # needs full and lsh8
  table = (tmp_path / "lsh_vs_full.md").read_text()
  assert "## Length 64" in table and "| LSH-1 |" in table and "Check: LSH-1" in table
  assert (tmp_path / "lsh_vs_full.png").stat().st_size > 1000


def test_the_variants_differ_only_in_attention_and_rounds():
  for name, (_, bindings, n_hashes) in lsh_vs_full.VARIANTS.items():
    assert all(b.startswith(("ReformerConfig.attention_types=", "N_HASHES=")) for b in bindings)
    assert (n_hashes is None) == ("lsh" not in bindings[0]), name
  assert lsh_vs_full.goal({"full": {"bits_per_byte": 1.0, "vs_full": 0.},
                           "lsh8": {"bits_per_byte": 1.03, "vs_full": 0.03}})["met"] is False
