"""The quick mode of experiments/generation_speed.py (fresh worker processes, HF included)."""
import json

from experiments import generation_speed


def test_generation_speed_quick(tmp_path):
  generation_speed.main(["--quick", "--new_tokens", "8", "--skip_long", "--out",
                         str(tmp_path)])
  record = json.loads((tmp_path / "generation_speed.json").read_text())
  assert record["quick"] and record["machine"]["threads"] >= 1
  assert {r["framework"] for r in record["runs"]} == set(generation_speed.FRAMEWORKS)
  assert not [r for r in record["runs"] if "error" in r], record["runs"]
  row, = record["comparison"]
  assert row["new_tokens"] == 8 and row["ours_cached_over_uncached"] > 0
  cached = [r for r in record["runs"] if r["framework"] == "ours_cached"][0]
  assert cached["cache_bytes"] > 0 and cached["prefill_s"] > 0
  assert cached["latency_vs_position"][0]["first_position"] == 13
  hf = [r for r in record["runs"] if r["framework"] == "hf_cached"][0]
  assert not hf["jax_imported"] and hf["new_tokens"] == 8
  assert "| 8 |" in (tmp_path / "generation_speed.md").read_text()


def test_compare_pairs_the_frameworks():
  runs = [{"framework": f, "new_tokens": 4, "tokens_per_s": s, "per_token_s": 1 / s,
           "max_rss_bytes": 2 ** 30} for f, s in zip(generation_speed.FRAMEWORKS,
                                                     (100., 4., 25., 2.))]
  row, = generation_speed.compare(runs, [4])
  assert row["ours_cached_over_uncached"] == 25. and row["hf_cached_over_uncached"] == 12.5
  assert row["hf_cached_per_token_over_ours"] == 4.
