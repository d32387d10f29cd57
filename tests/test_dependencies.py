"""torch and transformers are test and benchmark dependencies, never runtime ones."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_ONLY = ("torch", "transformers")


def test_requirements_do_not_list_test_only_packages():
  with open(os.path.join(ROOT, "requirements.txt")) as f:
    names = {line.split("#")[0].strip().split("=")[0].split(">")[0].split("<")[0].strip().lower()
             for line in f}
  assert not names & set(TEST_ONLY), names


@pytest.mark.parametrize("module", ["reformer_jax.train", "reformer_jax.evaluate",
                                    "reformer_jax.sample", "reformer_jax.convert"])
def test_entry_points_do_not_import_test_only_packages(module):
  """Even where torch is installed (tensorboardX, for one, imports it when it can)."""
  code = (f"import sys, {module}; "
          f"print(','.join(m for m in {TEST_ONLY!r} if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       check=True).stdout.strip()
  assert out == "", f"importing {module} imported {out}"
