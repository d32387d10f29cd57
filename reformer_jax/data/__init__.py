"""Data pipelines: batches of {'inputs', 'targets', 'weights'} for training.

Sources (plain functions, gin-free, for `gin.external_configurable`):
  shipped_corpus  byte-level text shipped with the package (Hamlet + Macbeth);
  local_file      byte-level data from any local file (enwik8-style splits);
  python_stdlib_corpus  the Python standard library's source files (~12 MB, no download),
                  split by file;
  tfds_text       byte-level data from a TensorFlow Datasets text feature;
  duplication     the paper's synthetic `0 w 0 w` copy task;
  mqar            multi-query associative recall (Zoology), scored on the answers only;
  offset_tokens   another byte-level source with token ids shifted (converted models).
Each returns an object with `vocab_size`, `train_batch(step, batch_size,
seq_len)` (a pure function of seed and step) and `eval_batches(batch_size,
seq_len, n_batches=None, split='eval')`.

Sequence-classification sources return `ClassificationData` (the same methods, batches
{'inputs', 'mask', 'labels', 'weights'}, plus `num_labels`):
  listops           Long Range Arena's ListOps, generated locally from a seed;
  text_label_files  local JSONL / CSV / TSV files of (text, label), read as bytes;
  tfds_classification  a TFDS text-classification dataset (imdb_reviews, ...), as bytes.
Span question answering: `span_qa_files` (local JSONL of question, context, answer) returns
`SpanData` (batches {'inputs', 'mask', 'start', 'end', 'weights'}).
"""
from reformer_jax.data.batch import Batch
from reformer_jax.data.batch import lm_batch
from reformer_jax.data.byte_codec import ByteCodec
from reformer_jax.data.classification import ClassificationData
from reformer_jax.data.duplication_task import duplication
from reformer_jax.data.duplication_task import DuplicationTask
from reformer_jax.data.listops_task import listops
from reformer_jax.data.lm_data import LMData
from reformer_jax.data.mqar import MQARData
from reformer_jax.data.mqar import mqar
from reformer_jax.data.local_files import local_file
from reformer_jax.data.offset_bytes import OffsetByteCodec
from reformer_jax.data.offset_bytes import offset_tokens
from reformer_jax.data.python_stdlib import python_stdlib_corpus
from reformer_jax.data.shipped import CORPUS_PATH
from reformer_jax.data.shipped import shipped_corpus
from reformer_jax.data.span_qa import SpanData
from reformer_jax.data.span_qa import span_qa_files
from reformer_jax.data.splits import contiguous_split
from reformer_jax.data.text_files import text_label_files
from reformer_jax.data.tfds_classification import tfds_classification
from reformer_jax.data.tfds_source import tfds_text
