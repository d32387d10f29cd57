"""Byte-level text codec: UTF-8 bytes are the tokens (vocabulary 256)."""
import numpy as np


class ByteCodec:
  """Maps text to its UTF-8 bytes and back; token ids are byte values."""

  vocab_size = 256

  def encode(self, text: str) -> np.ndarray:
    """Returns the [len(text.encode('utf-8'))] int32 byte tokens of `text`."""
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

  def decode(self, tokens) -> str:
    """Returns the text of [length] byte tokens (bad UTF-8 becomes U+FFFD)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
      raise ValueError(
          f"decode takes one [length] token sequence, got shape "
          f"{tokens.shape}; decode each row of a batch separately.")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
      raise ValueError(
          f"byte tokens must lie in [0, 256), got values in "
          f"[{tokens.min()}, {tokens.max()}]; a model with a larger vocab_size "
          "must not emit ids >= 256 for byte-level text.")
    return tokens.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
