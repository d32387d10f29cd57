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
  # 64 tokens fit and nothing longer was compiled: a lower bound.
  assert "| crime_and_punishment | float32 | ≥ 64 (" in (
      tmp_path / "accelerator_plan.md").read_text()

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

  # --fresh compiles the command's specs again and keeps the other records.
  other = dict(run, spec=dict(run["spec"], length=128))
  (tmp_path / "accelerator_plan.json").write_text(json.dumps(dict(result, runs=[run, other])))
  compiled = []
  monkeypatch.setattr(common, "measure",
                      lambda name, spec, **kwargs: compiled.append(spec) or dict(run, spec=None))
  fresh = accelerator_plan.main(["--quick", "--fresh", "--out", str(tmp_path)])
  assert [s["length"] for s in compiled] == [64]
  assert sorted(r["spec"]["length"] for r in fresh["runs"]) == [64, 128]
  # Only the cached lengths from --min_len to --max_len are compiled again.
  stale = accelerator_plan.Runs(tmp_path / "accelerator_plan.json", (100, 200), 1.).stale
  assert [json.loads(k)["length"] for k in stale] == [128]


def test_slice_splits_one_sequence_over_its_chips():
  exp = accelerator_plan.experiment({"model": "crime_and_punishment", "variant": "float32",
                                     "length": 2 ** 24, "sequence": 8})
  assert (exp.mesh.data, exp.mesh.sequence, exp.seq_len, exp.batch_size) == (1, 8, 2 ** 24, 1)
  assert exp.model.resolved_axial_shape == (16384, 1024)


def test_workarounds_force_the_cpu_only_ones_on_and_lay_an_fsdp_mesh():
  settings = accelerator_plan.workaround_settings()
  assert settings["partitioner_gathers:on"] == {"partitioner_gathers": True}
  assert settings["float32_accumulation:on"] == {"float32_accumulation": True}
  exp = accelerator_plan.experiment({"model": "enwik8", "variant": "float32", "length": 2048,
                                     "fsdp": 8})
  assert (exp.mesh.data, exp.mesh.fsdp, exp.batch_size) == (1, 8, 8)
  with pytest.raises(SystemExit):  # --fsdp without --workarounds
    accelerator_plan.parse_args(["--fsdp", "8"])


def test_tables_show_every_cached_run_and_the_refused_ones():
  """The longest-fitting table reads every run in the JSON (not only the last command's),
  and a compile the TPU compiler refused shows the temporaries it asked for."""
  def run(target, length, fits, **extra):
    spec = dict(accelerator_plan.SPEC_DEFAULTS, model="crime_and_punishment",
                variant="float32", target=target, length=length)
    memory = {"bytes_per_device": {"arguments": 1, "temporaries": 2, "outputs": 1,
                                   "aliased": 1, "program": 0, "peak": length}} if fits else {}
    return dict({"spec": spec, "fits": fits}, **memory, **extra)

  runs = [run("v5e:1x1", 2 ** 20, True), run("v5e:1x1", 2 ** 21, False,
                                              temporaries_required_bytes=17 * 2 ** 30),
          run("v6e:1x1", 2 ** 21, True), run("v4:1x1x1", 2 ** 22, False)]
  rows = accelerator_plan.longest_known(runs)
  assert rows == [{"model": "crime_and_punishment", "variant": "float32", "chips": {
      "v5e": {"length": 2 ** 20, "need_bytes": 2 ** 20, "refused": 2 ** 21},
      "v6e": {"length": 2 ** 21, "need_bytes": 2 ** 21, "refused": None},
      "v4": {"length": None, "need_bytes": None, "refused": 2 ** 22}}}]
  text = accelerator_plan.markdown({"runs": runs, "usable_hbm": {}, "workarounds": []})
  assert ("| crime_and_punishment | float32 | none; 4,194,304 does not fit | "
          "1,048,576 (0.00 GiB; 2,097,152 does not fit) | ≥ 2,097,152 (0.00 GiB) |") in text
  assert "| v5e:1x1 | 2,097,152 | — | 17.00 (refused) | — | — | — | refused | no |" in text
