"""What HF's LSH layers draw and pick, replayed: rotations, bucket counts, padding."""
import math
from typing import Any, Mapping, Optional, Tuple, Union

import numpy as np

from reformer_jax.hf.config import HF_DEFAULTS
from reformer_jax.models import ReformerConfig


def hf_rotations(config: ReformerConfig, hash_seed: int, dtype: str = "float32") -> np.ndarray:
  """The LSH rotations HF draws with `config.hash_seed = hash_seed` (needs torch; CPU).

  HF reseeds before every hashing, so all LSH layers (and calls) use this one array: pass
  it as `ReformerLM(config).apply(..., lsh_rotations=R)`. `dtype` is the torch model's
  ("float64" after `.double()`): HF draws the rotations in it.

  Returns:
    `[n_heads, d_head, n_hashes, sum(n_buckets factors) // 2]` of `dtype`.
  """
  import torch  # pylint: disable=g-import-not-at-top
  if config.n_buckets is None:
    raise ValueError("config.n_buckets is None: HF picks num_buckets at its first forward "
                     "(from the length); replay HF's rotations with config.replace("
                     "n_buckets=hf_num_buckets(hf_config, length))")
  factors = config.n_buckets if isinstance(config.n_buckets, tuple) else (config.n_buckets,)
  generator = torch.Generator().manual_seed(hash_seed)
  shape = (config.n_heads, config.d_head, config.n_hashes, sum(factors) // 2)
  return torch.randn(shape, generator=generator, dtype=getattr(torch, dtype)).numpy()


def hf_num_buckets(hf: Mapping[str, Any], length: int) -> Union[int, Tuple[int, int]]:
  """The `num_buckets` HF's LSH layers use for a forward of `length` tokens.

  A set `hf['num_buckets']` is returned as is (factors as a tuple). None is what
  `LSHSelfAttention._set_num_buckets` picks at a layer's first forward, from `length`
  after HF's padding (`pad_like_hf`): the power of two at or below
  `2 * length // lsh_attn_chunk_length` (at least 2), factorised into two powers of two
  when it exceeds `2 * max(sqrt(max_position_embeddings // chunk), chunk)`.
  """
  hf = {**HF_DEFAULTS, **hf}
  if hf["num_buckets"] is not None:
    n_buckets = hf["num_buckets"]
    return tuple(n_buckets) if isinstance(n_buckets, list) else n_buckets
  chunk = hf["lsh_attn_chunk_length"]
  power = max(1, (2 * (length // chunk)).bit_length() - 1)
  limit = 2 * max(int((hf["max_position_embeddings"] // chunk) ** 0.5), chunk)
  if 2 ** power > limit:
    return (2 ** (power // 2), 2 ** (power - power // 2))
  return 2 ** power


def pad_like_hf(config: ReformerConfig, tokens: np.ndarray, mask: Optional[np.ndarray] = None
                ) -> Tuple[np.ndarray, np.ndarray]:
  """Pads a batch as transformers' ReformerModel pads it in evaluation.

  HF pads every input longer than the smallest chunk length to a multiple of the chunk
  lengths' least common multiple (masked padding at the end). reformer_jax pads each
  attention layer to its own chunk multiple instead; for LSH layers the two differ when
  the LCM exceeds the LSH chunk length, because the padding changes which sorted chunks
  the look-around reaches. Pad with this to compute exactly what HF computes, and slice
  the outputs back to the input length.

  Args:
    config: the model's config.
    tokens: `[batch, length]` token ids.
    mask: `[batch, length]`, True = real token; None = all real.

  Returns:
    `(tokens, mask)` padded to HF's length (mask bool, False on the padding).
  """
  tokens = np.asarray(tokens)
  batch, length = tokens.shape
  mask = np.ones((batch, length), bool) if mask is None else np.asarray(mask).astype(bool)
  chunks = [getattr(config, f"{kind}_chunk_len")
            for kind in sorted(set(config.layer_attention_types())) if kind in ("local", "lsh")]
  if not chunks or length <= min(chunks) or length % math.lcm(*chunks) == 0:
    return tokens, mask
  extra = -length % math.lcm(*chunks)
  return (np.pad(tokens, ((0, 0), (0, extra))),
          np.pad(mask, ((0, 0), (0, extra)), constant_values=False))

