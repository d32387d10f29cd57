"""Real text every machine with Python has: the standard library's own source files.

The `*.py` files under a directory (default: this Python's standard library,
`sysconfig.get_paths()['stdlib']`), in path order, are concatenated as bytes. Test
directories (`test`, `tests`, `idle_test`; some distributions leave them out) and
installed packages (`site-packages`, `dist-packages`) are skipped, so the text depends
only on the Python version. The split is by file: every `eval_every`-th file is eval
text, so evaluation scores files the model never saw. A process reads a directory once.
"""
import copy
import functools
import hashlib
import os
import pathlib
import platform
import sysconfig
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from reformer_jax.data.lm_data import LMData

SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages",
                          "__pycache__"})


def stdlib_directory() -> str:
  """This Python's standard library directory."""
  return sysconfig.get_paths()["stdlib"]


def corpus_files(directory: str) -> List[pathlib.Path]:
  """The corpus's `*.py` files under `directory`, sorted by their relative POSIX path."""
  root = pathlib.Path(directory)
  files = []
  for parent, dirs, names in os.walk(root):
    dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
    files += [pathlib.Path(parent, n) for n in names if n.endswith(".py")]
  return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _read(directory: Optional[str], eval_every: int) -> Tuple[Dict[str, bytes], Dict[str, Any]]:
  """(split name -> concatenated bytes, a record of the corpus)."""
  directory = os.path.expanduser(directory) if directory else stdlib_directory()
  return _read_directory(os.path.abspath(directory), eval_every)


@functools.lru_cache(maxsize=2)
def _read_directory(directory: str, eval_every: int
                    ) -> Tuple[Dict[str, bytes], Dict[str, Any]]:
  """`_read`, once per process and (directory, eval_every): a study builds the same data
  source for every run and evaluation."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"python_stdlib_corpus: no directory at {directory!r}; give directory= a folder "
        "of .py files, or leave it None for this Python's standard library "
        "(sysconfig.get_paths()['stdlib']).")
  if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 2:
    raise ValueError(f"python_stdlib_corpus: eval_every must be an int >= 2 (every "
                     f"eval_every-th file is eval text), got {eval_every!r}; e.g. 20.")
  files = corpus_files(directory)
  if len(files) < eval_every:
    raise ValueError(
        f"python_stdlib_corpus: {directory!r} holds {len(files)} .py files outside test "
        f"directories, fewer than eval_every={eval_every}, so the eval split would be "
        "empty; give a directory with more files or a smaller eval_every.")
  parts = {"train": [], "eval": []}
  for i, path in enumerate(files):
    parts["eval" if i % eval_every == eval_every - 1 else "train"].append(path.read_bytes())
  splits = {name: b"".join(chunks) for name, chunks in parts.items()}
  record = {"directory": directory, "python": platform.python_version(),
            "eval_every": eval_every,
            "files": {name: len(chunks) for name, chunks in parts.items()},
            "bytes": {name: len(text) for name, text in splits.items()},
            "sha256": {name: hashlib.sha256(text).hexdigest()
                       for name, text in splits.items()}}
  return splits, record


def python_stdlib_corpus(directory: Optional[str] = None, seed: int = 0,
                         eval_every: int = 20) -> LMData:
  """Byte-level LMData (vocab 256) over the Python standard library's source files.

  Python 3.11's library (test directories left out) is 734 files, about 12.1 MB.

  Args:
    directory: the folder whose `*.py` files make the corpus; None: the standard library
      of the running Python.
    seed: seed of the training crops.
    eval_every: every `eval_every`-th file (in path order) goes to 'eval', the rest to
      'train'.

  Returns:
    LMData with 'train' and 'eval' [length] uint8 byte streams.
  """
  splits, _ = _read(directory, eval_every)
  return LMData({name: np.frombuffer(text, np.uint8) for name, text in splits.items()},
                seed=seed)


def corpus_record(directory: Optional[str] = None, eval_every: int = 20) -> Dict[str, Any]:
  """What `python_stdlib_corpus(directory, eval_every=...)` reads: the directory, the
  Python version, files and bytes per split and their SHA-256 (the text differs between
  Python versions)."""
  return copy.deepcopy(_read(directory, eval_every)[1])
