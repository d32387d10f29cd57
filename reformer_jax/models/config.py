"""Hyperparameters of `ReformerLM`."""
import dataclasses
import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import jax.numpy as jnp

ATTENTION_TYPES = ("local", "lsh", "full", "shared_qk_full")
POSITIONAL_TYPES = ("axial", "learned", "sinusoidal", "none")


def _is_int(value) -> bool:
  """A Python or numpy integer, not a bool."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _python_ints(value):
  """`value` with numpy integers (also inside a tuple) as Python ints."""
  if isinstance(value, tuple):
    return tuple(_python_ints(v) for v in value)
  return int(value) if _is_int(value) else value


@dataclasses.dataclass(frozen=True)
class ReformerConfig:
  """Settings of a Reformer language model; frozen and hashable, change with `.replace(...)`.

  Attributes:
    vocab_size: number of token ids.
    d_model: width of each of the two residual streams.
    d_ff: hidden width of the feed-forward blocks.
    n_heads: attention heads.
    d_head: width of each head.
    n_layers: reversible layers (each one attention block and one feed-forward block).
    attention_types: attention of each layer, cycled over the layers; each one of
      "local", "lsh", "full", "shared_qk_full" (full attention with LSH's shared
      query-key parameters: evaluates an LSH-trained model exactly).
    causal: language-model (causal) masking in every attention.
    strict_causal: makes LSH attention strictly causal (no output depends on later tokens
      through the bucket sort); only meaningful with `causal`.
    positional: "axial", "learned", "sinusoidal" or "none".
    max_len: longest sequence; required for "learned" positions, and used to choose the
      axial shape when `axial_shape` is None.
    axial_shape: factors of the axial position table (product >= longest sequence);
      None: two powers of two covering `max_len` (or (64, 64) without `max_len`).
    axial_dims: widths of the axial factors, summing to `d_model`; None: d_model // 4
      for the first factor and the rest for the second (Hugging Face's 64 + 192 for 256).
    dropout_rate: hidden dropout (embeddings, block outputs, feed-forward, final norm).
    attention_dropout: attention-probability dropout of local and full attention.
    lsh_attention_dropout: attention-probability dropout of LSH / shared-QK attention.
    ff_activation: feed-forward activation name.
    ff_chunk_size: positions per feed-forward chunk (None: unchunked).
    n_hashes: LSH hashing rounds.
    n_buckets: LSH buckets (even int or tuple of factors); None: about 2 * length / chunk.
    lsh_chunk_len, lsh_n_chunks_before, lsh_n_chunks_after: LSH chunking.
    local_chunk_len, local_n_chunks_before, local_n_chunks_after: local attention chunking.
    local_wrap: local attention's look-around wraps around the sequence (chunk 0 sees the
      last chunk), as in Hugging Face and trax; matters only with `causal=False` (models
      imported from Hugging Face set it). Default: no wrap-around.
    correct_duplicates: subtract log(count) for keys seen in several hash rounds (paper).
    layer_norm_eps: epsilon of every LayerNorm (Hugging Face uses 1e-12).
    lm_head_bias: whether the output projection has a bias.
    loss_chunk_len: positions per chunk of the fused output-projection + cross-entropy.
    dtype: computation dtype (parameters stay float32).
    stream_dtype: dtype of the two reversible residual streams and their gradients.
      float32 (default) rebuilds each layer's input almost exactly; bfloat16 halves the
      largest activations (4 streams of [batch, length, d_model] in the backward pass) at
      the cost of bfloat16 rounding in the rebuilt inputs and the stream gradients.
    scan_layers: run the repeating cycle of layers (one per attention type) as a `lax.scan`:
      compile time flat in depth, but more memory (stacked parameters and gradients,
      looser buffer packing). Default: every layer unrolled.
    sequence_axis: the mesh axis the sequence is sharded over: the model then runs inside
      `shard_map` on one device's contiguous slice of positions (set by
      `parallel.sequence`, not by hand); None: the whole sequence on each device.
    deterministic: disables dropout (use `config.replace(deterministic=True)` for eval).
  """
  vocab_size: int = 256
  d_model: int = 256
  d_ff: int = 512
  n_heads: int = 2
  d_head: int = 64
  n_layers: int = 6
  attention_types: Tuple[str, ...] = ("local", "lsh")
  causal: bool = True
  positional: str = "axial"
  max_len: Optional[int] = None
  axial_shape: Optional[Tuple[int, ...]] = None
  axial_dims: Optional[Tuple[int, ...]] = None
  dropout_rate: float = 0.05
  attention_dropout: float = 0.05
  lsh_attention_dropout: float = 0.0
  ff_activation: str = "relu"
  ff_chunk_size: Optional[int] = None
  n_hashes: int = 1
  n_buckets: Optional[Union[int, Tuple[int, ...]]] = None
  lsh_chunk_len: int = 64
  lsh_n_chunks_before: int = 1
  lsh_n_chunks_after: int = 0
  local_chunk_len: int = 64
  local_n_chunks_before: int = 1
  local_n_chunks_after: int = 0
  local_wrap: bool = False
  correct_duplicates: bool = False
  strict_causal: bool = True
  layer_norm_eps: float = 1e-12
  lm_head_bias: bool = True
  loss_chunk_len: int = 4096
  dtype: jnp.dtype = jnp.float32
  stream_dtype: jnp.dtype = jnp.float32
  scan_layers: bool = False
  sequence_axis: Optional[str] = None
  deterministic: bool = False

  def __post_init__(self):
    # Sequences given as lists are stored as tuples so the config stays hashable, and numpy
    # integers as Python ints.
    for name in ("attention_types", "axial_shape", "axial_dims", "n_buckets"):
      value = getattr(self, name)
      if isinstance(value, Sequence) and not isinstance(value, str):
        object.__setattr__(self, name, tuple(value))
    for field in dataclasses.fields(self):
      object.__setattr__(self, field.name, _python_ints(getattr(self, field.name)))
    self.validate()

  def replace(self, **changes) -> "ReformerConfig":
    """A copy with `changes` applied (and validated)."""
    return dataclasses.replace(self, **changes)

  def validate(self):
    """Raises ValueError, saying how to fix it, for an inconsistent configuration."""
    for name in ("dtype", "stream_dtype"):
      try:
        floating = jnp.issubdtype(jnp.dtype(getattr(self, name)), jnp.floating)
      except TypeError:
        floating = False
      if not floating:
        raise ValueError(f"{name} must be a floating dtype such as 'float32' or 'bfloat16', "
                         f"got {getattr(self, name)!r}")
    for name in ("vocab_size", "d_model", "d_ff", "n_heads", "d_head", "n_layers", "n_hashes",
                 "lsh_chunk_len", "local_chunk_len", "loss_chunk_len"):
      value = getattr(self, name)
      if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int (not a bool or float), got {value!r}")
    for name in ("lsh_n_chunks_before", "lsh_n_chunks_after", "local_n_chunks_before",
                 "local_n_chunks_after"):
      value = getattr(self, name)
      if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be an int >= 0 (not a bool or float), got {value!r}")
    for name in ("dropout_rate", "attention_dropout", "lsh_attention_dropout"):
      value = getattr(self, name)
      if not 0. <= value < 1.:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    for name in ("ff_chunk_size", "max_len"):
      value = getattr(self, name)
      if value is not None and (not _is_int(value) or value < 1):
        raise ValueError(f"{name} must be None or an int >= 1 (not a bool or float), got "
                         f"{value!r}")
    if not isinstance(self.attention_types, tuple) or not self.attention_types:
      raise ValueError("attention_types must be a non-empty sequence such as ('local', 'lsh'), "
                       f"got {self.attention_types!r}")
    unknown = [t for t in self.attention_types if t not in ATTENTION_TYPES]
    if unknown:
      raise ValueError(f"unknown attention types {unknown}; choose from {ATTENTION_TYPES}")
    if self.n_buckets is not None:
      factors = self.n_buckets if isinstance(self.n_buckets, tuple) else (self.n_buckets,)
      if any(not _is_int(f) or f < 2 or f % 2 for f in factors):
        raise ValueError(f"n_buckets must be None, an even int >= 2 or a tuple of them, "
                         f"got {self.n_buckets!r}")
    if (self.causal and self.strict_causal and "lsh" in self.attention_types
        and self.lsh_n_chunks_before < 1):
      raise ValueError("strict causal LSH attention needs lsh_n_chunks_before >= 1 (its window "
                       "reaches back into the previous chunk); or set strict_causal=False")
    if self.sequence_axis is not None:
      full = sorted({t for t in self.attention_types if t in ("full", "shared_qk_full")})
      if full:
        raise ValueError(f"attention types {full} attend over the whole sequence and cannot "
                         f"run on slices of it (sequence axis '{self.sequence_axis}'): use "
                         f"'local' or 'lsh' attention, or no sequence axis")
    if self.positional not in POSITIONAL_TYPES:
      raise ValueError(f"positional must be one of {POSITIONAL_TYPES}, got {self.positional!r}")
    if self.positional == "learned" and self.max_len is None:
      raise ValueError("positional='learned' needs max_len (the size of the position table)")
    if self.positional == "axial":
      shape, dims = self.resolved_axial_shape, self.resolved_axial_dims
      if len(shape) != len(dims):
        raise ValueError(f"axial_shape {shape} and axial_dims {dims} must have the same length")
      if any(not _is_int(n) or n < 1 for n in shape + dims):
        raise ValueError(f"axial_shape {shape} and axial_dims {dims} must be positive ints")
      if sum(dims) != self.d_model:
        raise ValueError(f"axial_dims {dims} must sum to d_model={self.d_model}; e.g. "
                         f"({self.d_model // 4}, {self.d_model - self.d_model // 4})")
      if self.max_len is not None and math.prod(shape) < self.max_len:
        raise ValueError(f"axial_shape {shape} covers {math.prod(shape)} positions < max_len="
                         f"{self.max_len}; enlarge a factor or leave axial_shape=None")

  @property
  def resolved_axial_shape(self) -> Tuple[int, ...]:
    """`axial_shape`, or two powers of two whose product covers `max_len` (default 64 x 64)."""
    if self.axial_shape is not None:
      return self.axial_shape
    if self.max_len is None:
      return (64, 64)
    bits = max(math.ceil(math.log2(self.max_len)), 0)
    return (2 ** (bits // 2), 2 ** (bits - bits // 2))

  @property
  def resolved_axial_dims(self) -> Tuple[int, ...]:
    """`axial_dims`, or (d_model // 4, d_model - d_model // 4)."""
    if self.axial_dims is not None:
      return self.axial_dims
    return (self.d_model // 4, self.d_model - self.d_model // 4)

  def layer_attention_types(self) -> Tuple[str, ...]:
    """The attention type of each of the `n_layers` layers."""
    return tuple(self.attention_types[i % len(self.attention_types)]
                 for i in range(self.n_layers))


def position_limit(config: ReformerConfig) -> Optional[int]:
  """The longest sequence the position table covers (None: unlimited)."""
  if config.positional == "axial":
    return math.prod(config.resolved_axial_shape)
  if config.positional == "learned":
    return config.max_len
  return None
