"""Tests for reformer_jax/data/python_stdlib.py."""
import hashlib

import gin
import pytest

from reformer_jax.data.python_stdlib import corpus_record, python_stdlib_corpus
from reformer_jax.trainer import gin_setup


@pytest.fixture(name="library")
def _library(tmp_path):
  """A tiny 'standard library': 4 modules in path order, plus files the corpus skips."""
  root = tmp_path / "lib"
  texts = {"a.py": b"import os\n", "b/__init__.py": b"x = 1\n", "b/c.py": b"def f():\n  pass\n",
           "z.py": b"print('z')\n"}
  skipped = {"test/test_a.py": b"assert 0\n", "b/tests/t.py": b"t\n", "site-packages/p.py": b"p\n",
             "notes.txt": b"not python\n"}
  for name, text in {**texts, **skipped}.items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(text)
  return root, texts


def test_files_in_path_order_split_by_file(library):
  root, texts = library
  data = python_stdlib_corpus(str(root), seed=3, eval_every=2)
  # Path order a.py, b/__init__.py, b/c.py, z.py: every 2nd file is eval text.
  assert data.splits["train"].tobytes() == texts["a.py"] + texts["b/c.py"]
  assert data.splits["eval"].tobytes() == texts["b/__init__.py"] + texts["z.py"]
  assert data.vocab_size == 256 and data.seed == 3
  record = corpus_record(str(root), eval_every=2)
  assert record["files"] == {"train": 2, "eval": 2}
  assert record["bytes"] == {"train": 26, "eval": 17}
  assert record["sha256"]["eval"] == hashlib.sha256(texts["b/__init__.py"]
                                                    + texts["z.py"]).hexdigest()


def test_bad_directory_and_too_few_files(library, tmp_path):
  root, _ = library
  with pytest.raises(FileNotFoundError, match="no directory at .*sysconfig"):
    python_stdlib_corpus(str(tmp_path / "missing"))
  with pytest.raises(ValueError, match="holds 4 .py files .* fewer than eval_every=20"):
    python_stdlib_corpus(str(root))
  with pytest.raises(ValueError, match="eval_every must be an int >= 2"):
    python_stdlib_corpus(str(root), eval_every=1)


def test_gin_selects_it_with_an_absolute_directory(library, monkeypatch):
  root, _ = library
  monkeypatch.chdir(root.parent)
  gin_setup.parse(["quickstart.gin"], ["Experiment.data=@python_stdlib_corpus",
                                       "python_stdlib_corpus.directory='lib'",
                                       "python_stdlib_corpus.eval_every=2", "SEQ_LEN=8"])
  assert gin.query_parameter("python_stdlib_corpus.directory") == str(root)
  data = gin_setup.make_experiment().make_data()
  assert len(data.splits["train"]) == 26
