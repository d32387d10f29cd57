"""Smoke test of experiments/accelerator_plan.py: one tiny TPU compile (libtpu, the tpu-plan
extra), its tables and plot, and the cache that keeps a rerun from compiling again."""
import importlib.util
import json

import pytest

from experiments import accelerator_plan, common

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="libtpu not installed (pip install -e '.[tpu-plan]')")


def test_accelerator_plan_quick_and_its_cache(tmp_path, monkeypatch):
  accelerator_plan.main(["--quick", "--out", str(tmp_path)])
  result = json.loads((tmp_path / "accelerator_plan.json").read_text())
  assert (tmp_path / "accelerator_plan.png").stat().st_size > 1000
  (run,) = result["runs"]
  assert run["spec"]["target"] == "v5e:1x1" and run["spec"]["length"] == 64
  assert run["fits"] is True and run["hbm"]["generation"] == "v5e"
  assert 0 < run["compile_cpu_s"]
  assert result["longest"] == [{"model": "crime_and_punishment", "variant": "float32",
                                "chips": {"v5e": {"length": 64,
                                                  "need_bytes": accelerator_plan.need_bytes(run)}}}]
  assert "| crime_and_punishment | float32 | 64 (" in (tmp_path / "accelerator_plan.md").read_text()

  def no_compiling(*args, **kwargs):
    raise AssertionError("compiled again instead of reading the cache")

  monkeypatch.setattr(common, "measure", no_compiling)
  again = accelerator_plan.main(["--quick", "--out", str(tmp_path)])
  assert again["runs"] == result["runs"]

  # A compile that failed for another reason than memory is not a result: it runs again.
  failed = dict(run, error="worker exited with -11")
  del failed["fits"]
  (tmp_path / "accelerator_plan.json").write_text(json.dumps(dict(result, runs=[failed])))
  monkeypatch.setattr(common, "measure", lambda *args, **kwargs: dict(run, spec=None))
  rerun = accelerator_plan.main(["--quick", "--out", str(tmp_path)])
  assert [r["fits"] for r in rerun["runs"]] == [True] and "error" not in rerun["runs"][0]


def test_slice_splits_one_sequence_over_its_chips():
  exp = accelerator_plan.experiment({"model": "crime_and_punishment", "variant": "float32",
                                     "length": 2 ** 24, "sequence": 8})
  assert (exp.mesh.data, exp.mesh.sequence, exp.seq_len, exp.batch_size) == (1, 8, 2 ** 24, 1)
  assert exp.model.resolved_axial_shape == (16384, 1024)
