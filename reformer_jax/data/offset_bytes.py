"""Byte-level data with token ids shifted by an offset (e.g. google/reformer-enwik8)."""
import numpy as np

from reformer_jax.data.lm_data import LMData


class OffsetByteCodec:
  """UTF-8 bytes as token ids `byte + offset` (google/reformer-enwik8 uses offset 2)."""

  def __init__(self, offset: int):
    if offset < 0:
      raise ValueError(f"token offset must be >= 0, got {offset}")
    self.offset = offset
    self.vocab_size = 256 + offset

  def encode(self, text: str) -> np.ndarray:
    """`[n_bytes]` int32 token ids of `text`."""
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + self.offset

  def decode(self, tokens) -> str:
    """Text of `[length]` token ids; ids below the offset (special tokens) are dropped."""
    tokens = np.asarray(tokens)
    tokens = tokens[(tokens >= self.offset) & (tokens < self.vocab_size)] - self.offset
    return tokens.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def offset_tokens(source, offset: int = 0) -> LMData:
  """A byte-level data source with token ids shifted by `offset`.

  gin: `@reformer_jax.convert.offset_tokens` (registered by `reformer_jax.hf.workdir`,
  which `reformer_jax.convert` imports).

  Args:
    source: a () -> LMData callable such as `@shipped_corpus` or `@local_file`.
    offset: added to every byte (2 for google/reformer-enwik8, whose ids 0 and 1 are
      special).

  Returns:
    LMData over the same splits with an `OffsetByteCodec`.
  """
  data = source()
  codec = OffsetByteCodec(offset)
  splits = {k: np.asarray(v, np.uint16) + np.uint16(offset) for k, v in data.splits.items()}
  return LMData(splits, codec=codec, seed=data.seed)
