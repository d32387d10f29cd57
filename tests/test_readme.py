"""Runs the README's Python examples, so the documented usage keeps working."""
import pathlib
import re

import pytest

_README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
_BLOCKS = re.findall(r"```python\n(.*?)```", _README.read_text(), flags=re.S)


def test_readme_has_examples():
  assert len(_BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(_BLOCKS)))
def test_readme_example_runs(index):
  exec(compile(_BLOCKS[index], f"README.md[python block {index}]", "exec"), {})
