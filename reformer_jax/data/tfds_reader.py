"""One TensorFlow Datasets split read without TensorFlow (`tfds.data_source`, array_record
files), for the TFDS data sources `tfds_text` and `tfds_classification`: the errors say
when TensorFlow is needed and how to do without it."""
from typing import Optional

import numpy as np


def read_examples(name: str, split: str, data_dir: Optional[str], download: bool, *,
                  source: str):
  """The examples (dicts of numpy values) of one TFDS split; errors name `source`, the
  data source reading them (e.g. 'tfds_text')."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    return tfds.data_source(
        name, split=split, data_dir=data_dir, download=download,
        builder_kwargs={"file_format": "array_record"})
  except ModuleNotFoundError as e:
    if e.name == "importlib_resources":
      raise ImportError(
          f"{source}: preparing a TFDS dataset needs the `importlib_resources` "
          "package, which tensorflow-datasets 4.9 imports but does not declare "
          "on Python >= 3.9: `pip install importlib_resources`.") from e
    if e.name != "tensorflow":
      raise
    raise ImportError(
        f"{source}: preparing {name!r} runs its TFDS builder, which needs "
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
          f"{source}: {name!r} in data_dir {data_dir!r} was prepared as "
          f"tfrecord files, which only TensorFlow reads: `pip install "
          f"tensorflow`, or re-prepare it with `tfds build {name} "
          f"--file_format=array_record`.") from e
    return tfds.as_numpy(
        tfds.load(name, split=split, data_dir=data_dir, download=False))


def text_bytes(value) -> bytes:
  """Returns a decoded TFDS Text value (str, bytes or numpy scalar) as bytes."""
  if isinstance(value, np.ndarray):
    value = value.item()
  return value.encode("utf-8") if isinstance(value, str) else bytes(value)
