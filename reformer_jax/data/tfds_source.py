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
from reformer_jax.data.tfds_reader import read_examples, text_bytes


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
  for i, example in enumerate(read_examples(name, split, data_dir, download,
                                            source="tfds_text")):
    if feature not in example:
      raise ValueError(
          f"tfds_text: {name!r} examples have no feature {feature!r}; they "
          f"have {sorted(example)}. Set feature to the text one (pg19: "
          "'book_text').")
    if i:
      stream += separator
    stream += text_bytes(example[feature])
  return np.frombuffer(stream, np.uint8)
