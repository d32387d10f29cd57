"""Byte-level language-modelling data from a TensorFlow Datasets text dataset.

Reads through `tfds.data_source` (array_record files, random access) and needs
no TensorFlow. TensorFlow is needed only to *prepare* datasets whose TFDS
builder code calls `tf.io.gfile` (tiny_shakespeare and pg19 do), and to read
datasets that were prepared as tfrecord files; the errors say so.
tensorflow-datasets itself is imported on first use, so training on other
sources (and importing the package) does without it.
"""
from typing import Optional

import numpy as np

from reformer_jax.data.lm_data import LMData


def tfds_text(name: str, data_dir: Optional[str] = None, feature: str = "text",
              train_split: str = "train", eval_split: str = "validation",
              test_split: Optional[str] = "test", seed: int = 0,
              download: bool = True, separator: str = "\n") -> LMData:
  """Byte-level LMData (vocab 256): the UTF-8 bytes of a text feature.

  Each split's examples, in dataset order, are concatenated into one byte
  stream with `separator` between them ('tiny_shakespeare' has one example per
  split; 'pg19' has one book per example, feature 'book_text').

  Args:
    name: TFDS name, e.g. 'tiny_shakespeare' or 'pg19'.
    data_dir: TFDS data directory (None = $TFDS_DATA_DIR or
      ~/tensorflow_datasets).
    feature: the text feature of each example.
    train_split: TFDS split read as 'train'.
    eval_split: TFDS split read as 'eval'.
    test_split: TFDS split read as 'test'; None = no test split.
    seed: seed of the training crops.
    download: prepare the dataset (as array_record files) if data_dir lacks it.
    separator: text put between consecutive examples.

  Returns:
    LMData with 'train', 'eval' (and 'test') [length] uint8 byte streams.
  """
  tfds_splits = {"train": train_split, "eval": eval_split, "test": test_split}
  return LMData(
      {ours: _split_bytes(name, split, data_dir, feature, download,
                          separator.encode("utf-8"))
       for ours, split in tfds_splits.items() if split is not None},
      seed=seed)


def _split_bytes(name, split, data_dir, feature, download,
                 separator) -> np.ndarray:
  """Returns the [length] uint8 bytes of one split's concatenated texts."""
  stream = bytearray()
  for i, example in enumerate(_examples(name, split, data_dir, download)):
    if feature not in example:
      raise ValueError(
          f"tfds_text: {name!r} examples have no feature {feature!r}; they "
          f"have {sorted(example)}. Set feature to the text one (pg19: "
          "'book_text').")
    if i:
      stream += separator
    stream += _to_bytes(example[feature])
  return np.frombuffer(stream, np.uint8)


def _examples(name, split, data_dir, download):
  """Returns the examples (dicts of numpy values) of one TFDS split."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    return tfds.data_source(
        name, split=split, data_dir=data_dir, download=download,
        builder_kwargs={"file_format": "array_record"})
  except ModuleNotFoundError as e:
    if e.name == "importlib_resources":
      raise ImportError(
          "tfds_text: preparing a TFDS dataset needs the `importlib_resources` "
          "package, which tensorflow-datasets 4.9 imports but does not declare "
          "on Python >= 3.9: `pip install importlib_resources`.") from e
    if e.name != "tensorflow":
      raise
    raise ImportError(
        f"tfds_text: preparing {name!r} runs its TFDS builder, which needs "
        f"TensorFlow: `pip install tensorflow` and run once (it writes "
        f"array_record files to data_dir), or build it where TensorFlow is "
        f"installed with `tfds build {name} --file_format=array_record "
        f"--data_dir=DIR` and pass data_dir=DIR here. Reading prepared "
        f"array_record files needs no TensorFlow.") from e
  except NotImplementedError as e:
    try:
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    except ModuleNotFoundError:
      raise ImportError(
          f"tfds_text: {name!r} in data_dir {data_dir!r} was prepared as "
          f"tfrecord files, which only TensorFlow reads: `pip install "
          f"tensorflow`, or re-prepare it with `tfds build {name} "
          f"--file_format=array_record`.") from e
    return tfds.as_numpy(
        tfds.load(name, split=split, data_dir=data_dir, download=False))


def _to_bytes(value) -> bytes:
  """Returns a decoded TFDS Text value (str, bytes or numpy scalar) as bytes."""
  if isinstance(value, np.ndarray):
    value = value.item()
  return value.encode("utf-8") if isinstance(value, str) else bytes(value)
