"""Tests for reformer_jax/data/tfds_source.py: offline, without TensorFlow."""
import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import lazy_imports_utils

from reformer_jax.data.tfds_source import tfds_text

_HAS_TF = importlib.util.find_spec("tensorflow") is not None
_DOCS = {"train": ["First train text.", "Second, ünïcode."],
         "validation": ["Eval text here."], "test": ["Test text, long enough."]}


class ReformerJaxTinyText(tfds.core.GeneratorBasedBuilder):
  """A real (not mocked) two-example text dataset built from _DOCS."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {name: self._generate_examples(docs) for name, docs in _DOCS.items()}

  def _generate_examples(self, docs):
    for i, doc in enumerate(docs):
      yield i, {"text": doc}


class ReformerJaxTfOnlyText(ReformerJaxTinyText):
  """Like tiny_shakespeare: its preparation calls tf.io.gfile."""

  def _split_generators(self, dl_manager):
    lazy_tf = lazy_imports_utils.tensorflow
    lazy_tf.io.gfile.exists("/")
    return super()._split_generators(dl_manager)


def test_prepares_and_reads_array_record_without_tensorflow(tmp_path):
  data = tfds_text("reformer_jax_tiny_text", data_dir=str(tmp_path), seed=1)
  assert (tmp_path / "reformer_jax_tiny_text" / "1.0.0").is_dir()
  assert data.vocab_size == 256
  assert data.decode(data.splits["train"]) == "\n".join(_DOCS["train"])
  assert data.decode(data.splits["eval"]) == _DOCS["validation"][0]
  assert data.decode(data.splits["test"]) == _DOCS["test"][0]
  batch = data.train_batch(step=2, batch_size=3, seq_len=8)
  assert batch["inputs"].shape == (3, 8)
  again = tfds_text("reformer_jax_tiny_text", data_dir=str(tmp_path), seed=1,
                    download=False, test_split=None)
  assert set(again.splits) == {"train", "eval"}
  for key in ("inputs", "targets"):
    np.testing.assert_array_equal(again.train_batch(2, 3, 8)[key], batch[key])
  joined = tfds_text("reformer_jax_tiny_text", data_dir=str(tmp_path),
                     download=False, separator=" | ")
  assert joined.decode(joined.splits["train"]) == " | ".join(_DOCS["train"])
  if not _HAS_TF:
    assert "tensorflow" not in sys.modules


def test_mock_data_tiny_shakespeare():
  with tfds.testing.mock_data(num_examples=3):
    data = tfds_text("tiny_shakespeare", seed=0)
  assert set(data.splits) == {"train", "eval", "test"}
  text = data.decode(data.splits["eval"])
  assert text.count("\n") == 2 and len(text) > 10
  batch = data.train_batch(step=0, batch_size=2, seq_len=8)
  np.testing.assert_array_equal(batch["inputs"][:, 1:],
                                batch["targets"][:, :-1])
  if not _HAS_TF:
    assert "tensorflow" not in sys.modules


def test_mock_data_maps_splits_and_features():
  def as_data_source(builder, split, **kwargs):
    del builder, kwargs
    return [{"book_text": f"{split} book {i}".encode(), "book_id": i}
            for i in range(2)]

  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    data = tfds_text("pg19", feature="book_text", eval_split="test",
                     test_split=None)
    assert data.decode(data.splits["train"]) == "train book 0\ntrain book 1"
    assert data.decode(data.splits["eval"]) == "test book 0\ntest book 1"
    assert "test" not in data.splits
    with pytest.raises(ValueError, match=r"no feature 'text'.*'book_text'"):
      tfds_text("pg19")


@pytest.mark.skipif(_HAS_TF, reason="TensorFlow is installed")
def test_preparing_a_tf_builder_says_pip_install_tensorflow(tmp_path):
  with pytest.raises(ImportError, match="pip install tensorflow.*tfds build "
                     "reformer_jax_tf_only_text --file_format=array_record"):
    tfds_text("reformer_jax_tf_only_text", data_dir=str(tmp_path))


@pytest.mark.skipif(_HAS_TF, reason="TensorFlow is installed")
def test_tfrecord_data_says_pip_install_tensorflow(monkeypatch):
  def tfrecord_only(*args, **kwargs):
    raise NotImplementedError("Random access data source for file format "
                              "tfrecord is not supported.")

  monkeypatch.setattr(tfds, "data_source", tfrecord_only)
  with pytest.raises(ImportError, match="tfrecord files, which only TensorFlow "
                     "reads: `pip install tensorflow`"):
    tfds_text("tiny_shakespeare", data_dir="/nonexistent")


def test_missing_importlib_resources_says_what_to_install(monkeypatch):
  def tfds_without_backport(*args, **kwargs):
    raise ModuleNotFoundError("No module named 'importlib_resources'",
                              name="importlib_resources")

  monkeypatch.setattr(tfds, "data_source", tfds_without_backport)
  with pytest.raises(ImportError, match="pip install importlib_resources"):
    tfds_text("tiny_shakespeare")


def test_tensorflow_datasets_is_imported_on_first_use():
  code = ("import sys\n"
          "import reformer_jax.train\n"
          "from reformer_jax.trainer import gin_setup\n"
          "gin_setup.parse(['quickstart.gin'])\n"
          "gin_setup.make_experiment().make_data()\n"
          "assert 'tensorflow_datasets' not in sys.modules, 'imported at start-up'\n")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=pathlib.Path(__file__).parents[2],
                 env=dict(os.environ, JAX_PLATFORMS="cpu"))
