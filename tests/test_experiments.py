"""Smoke tests of the benchmark scripts: each runs at tiny sizes and writes valid JSON + PNG."""
import json
import math
import pathlib
import subprocess
import sys

import pytest

from experiments import (accelerator_step, blog_tables, common, gemm_throughput,
                         hf_side_by_side, memory_vs_length, row_reductions)
from reformer_jax.trainer import optim


def _written(tmp_path, name):
  record = json.loads((tmp_path / f"{name}.json").read_text())
  assert (tmp_path / f"{name}.png").stat().st_size > 1000
  return record


def _peak_is_consistent(record):
  return record["peak_bytes"] == (record["argument_bytes"] + record["temp_bytes"]
                                  + record["output_bytes"] - record["alias_bytes"])


def test_memory_vs_length_quick(tmp_path):
  memory_vs_length.main(["--quick", "--out", str(tmp_path)])
  result = _written(tmp_path, "memory_vs_length")
  (point,) = result["compiled"]
  assert point["length"] == 64 and point["n_layers"] == 2 and _peak_is_consistent(point)
  peak = point["peak_buffers"]
  # The live buffers at the peak add up to XLA's peak (phi values, which own no storage,
  # left out); XLA's live-range simulation runs a few percent over it.
  assert peak["buffers"] and 0.5 * point["peak_bytes"] < peak["peak_live_bytes"]
  assert peak["peak_live_bytes"] <= 1.05 * point["peak_bytes"]
  table = (tmp_path / "memory_vs_length.md").read_text()
  assert "| 64 |" in table and "float32_peak_at_max_len" in table
  assert [r["n_layers"] for r in result["depth"]] == [1, 2]
  assert [r["n_layers"] for r in result["depth_scanned"]] == [1, 2]
  assert "| 2 | " in table and "`scan_layers=True`" in table
  (run,) = result["measured"]
  assert "error" not in run, run
  assert run["peak_bytes"] == point["peak_bytes"]  # the worker compiled the same program
  assert run["step_time_s"] > 0 and all(math.isfinite(x) for x in run["losses"])
  assert run["max_rss_bytes"] >= run["steps_max_rss_bytes"] > run["peak_bytes"]
  assert result["checks"]["depth_ratio"]["layers"] == [1, 2]


def test_precision_variants_round_trip():
  for name, changes in memory_vs_length.VARIANTS.items():
    assert memory_vs_length.variant_of(dict(changes, n_layers=2)) == name
  assert memory_vs_length.variant_of({}) == "float32"
  assert memory_vs_length.variant_of({"stream_dtype": "bfloat16"}) == "other"


def test_hf_side_by_side_quick(tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  hf_side_by_side.main(["--quick", "--rounds", "2", "--out", str(tmp_path)])
  result = _written(tmp_path, "hf_side_by_side")
  # Two rounds, the second with the other framework first.
  assert [(r["framework"], r["round"]) for r in result["runs"]] == [
      ("reformer_jax", 0), ("transformers", 0), ("transformers", 1), ("reformer_jax", 1)]
  for run in result["runs"]:
    assert "error" not in run, run
    assert run["length"] == 128 and run["threads"] == result["machine"]["threads"]
    assert run["step_time_s"] > 0 and all(math.isfinite(x) for x in run["losses"])
  runs = {r["framework"]: r for r in result["runs"]}
  assert not runs["transformers"]["jax_imported"]  # its RSS is PyTorch's alone
  # The same configuration: identical parameter counts, HF's causal LSH windows in ours,
  # our warmup learning rates in HF's Adam (not its peak rate from the first step).
  assert runs["reformer_jax"]["params"] == runs["transformers"]["params"]
  assert result["config"]["strict_causal"] is False
  _, opt_config = common.crime_and_punishment()
  schedule = optim.make_schedule(opt_config, common.TRAIN_STEPS)
  assert runs["transformers"]["learning_rates"] == pytest.approx(
      [float(schedule(0)), float(schedule(1))])
  assert runs["transformers"]["learning_rates"][0] < opt_config.learning_rate / 100
  (ratios,) = result["comparison"]
  assert ratios["rounds"] == 2 and len(ratios["speedup_per_round"]) == 2
  assert ratios["speedup_hf_over_ours"] > 0 and ratios["max_rss_ratio_ours_over_hf"] > 0


def _run_record(framework, round_, step_s, max_rss):
  return {"framework": framework, "length": 64, "round": round_, "step_time_s": step_s,
          "max_rss_bytes": max_rss, "steps_max_rss_bytes": max_rss - 2,
          "rss_before_timed_bytes": max_rss - 2 - round_}


def test_hf_side_by_side_compare_over_rounds():
  ours = [_run_record("reformer_jax", r, t, m)
          for r, (t, m) in enumerate([(1., 10), (4., 12), (2., 11)])]
  hf = [_run_record("transformers", r, t, m)
        for r, (t, m) in enumerate([(3., 20), (5., 24), (6., 22)])]
  ratios = hf_side_by_side.compare(ours, hf)
  assert ratios["rounds"] == 3
  # Medians of the rounds: ours 2 s, HF 5 s; memory: the largest round.
  assert ratios["step_time_s_ours"] == 2. and ratios["step_time_s_hf"] == 5.
  assert ratios["speedup_hf_over_ours"] == pytest.approx(2.5)
  assert ratios["speedup_per_round"] == pytest.approx([3., 1.25, 3.])
  assert ratios["max_rss_ratio_ours_over_hf"] == pytest.approx(12 / 24)
  assert ratios["steps_max_rss_ratio_ours_over_hf"] == pytest.approx(10 / 22)
  assert ratios["step_transient_bytes_ours"] == 2 and ratios["step_transient_bytes_hf"] == 2
  # A failed round on either side: no comparison.
  assert hf_side_by_side.compare(ours, hf + [dict(hf[0], round=3, error="killed")]) is None
  assert hf_side_by_side.compare([], hf) is None
  with pytest.raises(SystemExit):
    hf_side_by_side.parse_args(["--rounds", "0"])


def test_blog_tables_quick(tmp_path):
  pytest.importorskip("transformers")
  blog_tables.main(["--quick", "--out", str(tmp_path)])
  tables = _written(tmp_path, "blog_tables")["tables"]
  assert set(tables) == set(blog_tables.TABLES)
  for name in ("axial", "standard"):  # the blog's exact counts, also Hugging Face's
    assert tables["axial"]["param_check"][name]["equal"], tables["axial"]["param_check"]
  one, two = tables["reversible"]["rows"]
  assert two["ordinary"]["peak_bytes"] > two["reversible"]["peak_bytes"]
  assert (two["ordinary"]["peak_bytes"] - one["ordinary"]["peak_bytes"]
          > two["reversible"]["peak_bytes"] - one["reversible"]["peak_bytes"])
  memory = tables["axial"]["memory"]
  assert memory["standard"]["params"] > memory["axial"]["params"]
  for row in tables["attention"]["rows"] + tables["chunked_ff"]["rows"]:
    assert all(_peak_is_consistent(v) for v in row.values() if isinstance(v, dict))


def test_axial_shape_multiplies_to_length():
  assert hf_side_by_side.axial_shape(2 ** 19) == (512, 1024)
  assert hf_side_by_side.axial_shape(2 ** 14) == (128, 128)
  assert math.prod(hf_side_by_side.axial_shape(3 * 2 ** 10)) == 3 * 2 ** 10


@pytest.mark.parametrize("name", ["memory_vs_length", "hf_side_by_side", "blog_tables",
                                  "row_reductions", "accelerator_step", "listops_small"])
def test_scripts_run_by_path(name):
  script = common.REPO / "experiments" / f"{name}.py"
  out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                       text=True, check=True, cwd="/")
  assert "--quick" in out.stdout


def test_gemm_throughput_quick(tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  gemm_throughput.main(["--repeats", "1", "--quick", "--length", "64", "--out", str(tmp_path)])
  result = json.loads((tmp_path / "gemm_throughput.json").read_text())
  assert len(result["gemms"]) == len(gemm_throughput.PRODUCTS)
  for row in result["gemms"]:
    assert row["jax_s"] > 0 and row["torch_s"] > 0 and row["jax_gflops"] > 0
  assert {row["dtype"] for row in result["gemms"]} == {"float32", "bfloat16"}
  counted = result["step_matmuls"]
  # The float32 step is bounded by float32 rates only, not by the bfloat16 row.
  best_torch = max(r["torch_gflops"] for r in result["gemms"] if r["dtype"] == "float32")
  assert counted["seconds_at_best_torch_gemm_rate"] == pytest.approx(
      counted["hf_matmul_flops"] / (best_torch * 1e9))
  # Reversible training: forward, the backward's recomputation and two backward products
  # per forward product (the LM head is not recomputed): about 4x the forward.
  assert 3.2 < counted["hf_matmul_flops"] / counted["hf_forward_matmul_flops"] < 4.2
  assert counted["seconds_at_best_jax_gemm_rate"] > 0


def test_row_reductions_quick(tmp_path):
  row_reductions.main(["--repeats", "1", "--quick", "--out", str(tmp_path)])
  result = json.loads((tmp_path / "row_reductions.json").read_text())
  assert [row["reduction"] for row in result["reductions"]] == list(row_reductions.variants())
  for row in result["reductions"]:
    assert row["library_s"] > 0 and row["ours_s"] > 0


def test_quick_runs_write_elsewhere_unless_out_is_given(tmp_path, monkeypatch):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from experiments import hf_parity  # pylint: disable=import-outside-toplevel
  committed, quick = tmp_path / "committed", tmp_path / "quick"
  monkeypatch.setattr(common, "RESULTS_DIR", committed)
  monkeypatch.setattr(common, "QUICK_RESULTS_DIR", quick)
  monkeypatch.setattr(hf_parity, "OUTPUT_ROWS", hf_parity.OUTPUT_ROWS[:1])
  monkeypatch.setattr(hf_parity, "GRADIENT_ROWS", [])
  hf_parity.main(["--quick"])
  row_reductions.main(["--repeats", "1", "--quick"])
  assert not committed.exists()
  record = json.loads((quick / "hf_parity.json").read_text())
  assert record["quick"] and record["machine"]["time"] and len(record["outputs"]) == 1
  assert (quick / "hf_parity.md").is_file() and (quick / "row_reductions.json").is_file()
  for parse_args in (blog_tables.parse_args, memory_vs_length.parse_args,
                     accelerator_step.parse_args):
    assert common.out_dir(parse_args(["--quick"])) == quick
    assert common.out_dir(parse_args([])) == committed
    assert common.out_dir(parse_args(["--quick", "--out", "x"])) == pathlib.Path("x")


def test_einsum_flops():
  assert gemm_throughput.einsum_flops("ld,df->lf", (8, 4), (4, 3)) == 2 * 8 * 4 * 3
  assert gemm_throughput.einsum_flops("bqd,bkd->bqk", (2, 5, 4), (2, 6, 4)) == 2 * 2 * 5 * 4 * 6


def test_accelerator_step_quick(tmp_path):
  cpu = {"measured": [{"length": 64, "config": {"dtype": "float32"}, "step_time_s": 2.0,
                       "max_rss_bytes": 3 * common.GiB, "threads": 2},
                      {"length": 64, "config": {"dtype": "bfloat16"}, "error": "killed"}]}
  (tmp_path / "cpu.json").write_text(json.dumps(cpu))
  result = accelerator_step.main(["--quick", "--dtypes", "float32,bfloat16-streams",
                                  "--steps", "2", "--warmup", "1", "--platform", "cpu",
                                  "--cpu_results", str(tmp_path / "cpu.json"),
                                  "--out", str(tmp_path)])
  assert json.loads((tmp_path / "accelerator_step.json").read_text())["runs"] == json.loads(
      json.dumps(result["runs"]))
  fp32, streams = result["runs"]
  for run in (fp32, streams):
    assert "error" not in run, run
    assert run["device"] == {"platform": "cpu", "kind": "cpu", "count": 1}
    assert run["device_peak_bytes_in_use"] is None  # the CPU backend keeps no allocator stats
    assert run["tokens_per_s"] == pytest.approx(64 / run["step_time_s"])
    assert _peak_is_consistent(run) and len(run["step_times_s"]) == 2
  assert fp32["cpu"] == {"step_time_s": 2.0, "max_rss_bytes": 3 * common.GiB, "threads": 2}
  assert streams["cpu"] is None  # no CPU run of that variant to compare with
  table = (tmp_path / "accelerator_step.md").read_text().splitlines()
  assert table[2].startswith("| cpu | 64 | float32 |") and table[2].endswith(
      f"| 2.00 | 3.00 | {2.0 / fp32['step_time_s']:.1f}x |")
  assert table[3].endswith("| — | — | — |")


def test_accelerator_step_refuses_missing_cpu_results(tmp_path, capsys):
  with pytest.raises(SystemExit):
    accelerator_step.parse_args(["--cpu_results", str(tmp_path / "nope.json")])
  assert "does not exist" in capsys.readouterr().err
