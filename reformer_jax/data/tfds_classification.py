"""Sequence classification from a TensorFlow Datasets text-classification dataset
(imdb_reviews, ag_news_subset, yelp_polarity_reviews, ...), texts read as UTF-8 bytes.

Read as `tfds_text` reads (array_record files through `tfds.data_source`, no TensorFlow
needed for prepared datasets). Byte b is token b + 2 (0 padding, 1 CLS; vocab 258).
"""
from typing import Optional

import numpy as np

from reformer_jax.data.classification import SPECIAL_IDS, ClassificationData
from reformer_jax.data.tfds_reader import read_examples, text_bytes


def tfds_classification(name: str, data_dir: Optional[str] = None, text_feature: str = "text",
                        label_feature: str = "label", train_split: str = "train",
                        eval_split: str = "test", test_split: Optional[str] = "test",
                        num_labels: Optional[int] = None, seed: int = 0,
                        download: bool = True) -> ClassificationData:
  """ClassificationData of a TFDS dataset's (text, label) examples.

  Args:
    name: TFDS name, e.g. 'imdb_reviews'.
    data_dir: TFDS data directory (None = $TFDS_DATA_DIR or ~/tensorflow_datasets).
    text_feature, label_feature: the features of each example.
    train_split, eval_split, test_split: TFDS splits read as 'train', 'eval', 'test'
      (imdb_reviews has no validation split: eval defaults to 'test'; None: test = eval).
    num_labels: classes; default: the label feature's `num_classes`.
    seed: seed of the training batches.
    download: prepare the dataset if data_dir lacks it.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  if num_labels is None:
    feature = tfds.builder(name, data_dir=data_dir).info.features[label_feature]
    num_labels = int(feature.num_classes)
  splits, labels = {}, {}
  for ours, split in (("train", train_split), ("eval", eval_split),
                      ("test", test_split or eval_split)):
    splits[ours], labels[ours] = [], []
    for i, example in enumerate(read_examples(name, split, data_dir, download,
                                              source="tfds_classification")):
      if text_feature not in example or label_feature not in example:
        raise ValueError(f"tfds_classification: {name!r} examples have {sorted(example)}, "
                         f"not {text_feature!r} and {label_feature!r}; set text_feature / "
                         "label_feature")
      data = text_bytes(example[text_feature])
      if not data:
        raise ValueError(f"tfds_classification: {name!r} {split} example {i} has an empty "
                         "text")
      splits[ours].append(np.frombuffer(data, np.uint8).astype(np.int32) + SPECIAL_IDS)
      labels[ours].append(int(np.asarray(example[label_feature])))
  return ClassificationData(splits, labels, vocab_size=SPECIAL_IDS + 256,
                            num_labels=num_labels, seed=seed)
