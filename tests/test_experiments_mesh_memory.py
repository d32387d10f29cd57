"""The quick mode of experiments/mesh_memory.py (a process of its own: 8 CPU devices), and its
reading of collectives from compiled HLO."""
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

from experiments import mesh_memory

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_mesh_memory_quick(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.mesh_memory", "--quick", "--out",
                         str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads((tmp_path / "mesh_memory.json").read_text())
  data, fsdp = record["runs"]["data=8"], record["runs"]["fsdp=8"]
  assert data["state_bytes_per_device"] == data["state_bytes"]
  assert fsdp["state_bytes_per_device"] < data["state_bytes_per_device"] / 4
  assert data["collectives"]["all-reduce"]["bytes"] > 0       # the gradients
  assert fsdp["collectives"]["all-gather"]["bytes"] > 0       # the parameters
  assert record["summary"]["data8_over_fsdp8_peak"] == data["peak_bytes"] / fsdp["peak_bytes"]
  assert "| fsdp=8 |" in (tmp_path / "mesh_memory.md").read_text()


HLO = """\
%body.1 (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %ag = f32[64]{0} all-gather(f32[8]{0} %x), dimensions={0}
}

ENTRY %main.2 (a: f32[8]) -> f32[8] {
  %w = (s32[], f32[8]) while((s32[], f32[8]) %t), condition=%cond.1, body=%body.1, backend_config={"known_trip_count":{"n":"3"}}
  %ar = f32[4,2]{1,0} all-reduce(f32[4,2]{1,0} %y), to_apply=%add
}
"""


def test_collectives_are_counted_per_loop_iteration():
  out = mesh_memory.collective_bytes(HLO)
  assert out["all-gather"] == {"count": 3, "bytes": 3 * 64 * 4}
  assert out["all-reduce"] == {"count": 1, "bytes": 32}
  assert out["reduce-scatter"] == {"count": 0, "bytes": 0}


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed")
def test_a_target_of_other_than_eight_chips_is_one_line(tmp_path):
  with pytest.raises(SystemExit) as e:
    mesh_memory.main(["--quick", "--target=v5e:2x2", "--out", str(tmp_path)])
  assert str(e.value) == ("needs 8 devices, --target=v5e:2x2 has 4: name a topology of 8 "
                          "chips, e.g. v5e:2x4.")
  assert not list(tmp_path.iterdir())
