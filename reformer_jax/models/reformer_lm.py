"""The Reformer language model (Hugging Face `ReformerModelWithLMHead` / trax `ReformerLM` layout).

tokens -> `token_embed` -> dropout -> + `positional` -> streams (x, x) -> `encoder`
(reversible layers: x1 += Attention(LayerNorm(x2)); x2 += FeedForward(LayerNorm(x1)))
-> concat(x1, x2) -> `final_norm` (width 2 * d_model) -> dropout -> `lm_head` (to vocab).
Everything before `lm_head` is `encode`, the body the encoders of `reformer_encoder.py`
share.

Parameter tree (`params[...]`):
  token_embed/embedding                   [vocab, d_model]
  positional/axis_{i}                     [s_i, d_i]         (positional="axial")
  positional/embedding                    [max_len, d_model] (positional="learned")
  encoder/layer_{i}/attention/norm/{scale, bias}             [d_model]
  encoder/layer_{i}/attention/attention/...  "lsh", "shared_qk_full": query_key, value, out;
                                             "local", "full": query, key, value, out
                                             ({kernel}, no biases)
  encoder/layer_{i}/feed_forward/norm/{scale, bias}          [d_model]
  encoder/layer_{i}/feed_forward/feed_forward/{wi, wo}/{kernel, bias}
  final_norm/{scale, bias}                [2 * d_model]
  lm_head/kernel                          [2 * d_model, vocab]
  lm_head/bias                            [vocab]            (config.lm_head_bias)

Cached decoding (`ReformerLM.prefill`, then `ReformerLM.decode_step` per token) keeps each
attention layer's cache in the 'cache' collection, `encoder/layer_{i}/attention/attention/
...` (see `layers/kv_cache.py`, `layers/lsh_cache.py`; planned in `decoding.py`).
"""
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax.layers import logical_axes
from reformer_jax.layers.chunking import map_positions
from reformer_jax.layers.dense import LayerNormParams, layer_norm
from reformer_jax.layers.dropout import dropout
from reformer_jax.layers.feed_forward import ChunkedFeedForward
from reformer_jax.layers.full_attention import FullSelfAttention
from reformer_jax.layers.kv_cache import DecodeMode, Prefill, Step
from reformer_jax.layers.local_attention import LocalSelfAttention
from reformer_jax.layers.lsh_attention import LSHSelfAttention
from reformer_jax.layers.positional import (AxialPositionalEmbedding,
                                            LearnedPositionalEmbedding, check_ids, lookup,
                                            sinusoidal_positions)
from reformer_jax.layers.reversible import ReversibleStack
from reformer_jax.models.config import ReformerConfig
from reformer_jax.models.loss import chunked_cross_entropy


class AttentionBlock(nn.Module):
  """F of a reversible layer: LayerNorm `norm` -> self-attention `attention` -> dropout.

  Attributes:
    config: model settings.
    attention_type: "local", "lsh", "full" or "shared_qk_full".
  """
  config: ReformerConfig
  attention_type: str
  rebuilds = True  # accepts `rebuild=`; see `ReversibleStack`
  saves_state = True  # LSH keeps its buckets for the backward pass; see `ReversibleStack`
  decodes = True  # accepts `decode=`, keeps a 'cache' collection; see `ReversibleStack`

  @nn.compact
  def __call__(self, x: jnp.ndarray, aux: Dict[str, Any], rotations: Optional[jnp.ndarray],
               deterministic: bool, rebuild: Optional[Tuple[jnp.ndarray, ...]] = None,
               save_state: bool = False, state: Optional[jnp.ndarray] = None,
               decode: Optional[DecodeMode] = None):
    """`x` `[batch, length, d_model]` -> `[batch, length, d_model]`.

    `aux['mask']`: `[batch, length]` padding mask or None; `rotations`: this layer's LSH
    rotations or None (drawn from the 'hash' rng). `rebuild`: `(y, dx, dy)`: returns
    `(y - out, dx + dout/dx^T dy, param grads)` in one pass (local attention, and LSH
    attention with one hashing round; see `LocalSelfAttention`), or None.
    `save_state`: returns `(out, state)`, the state being LSH attention's buckets (None
    for the other types); `state`: those buckets, reused instead of hashing `x` again.
    `decode`: cached decoding by the attention (`kv_cache.Prefill` or `kv_cache.Step`).
    """
    cfg = self.config
    norm = LayerNormParams(x.shape[-1], name="norm")()
    mask = aux["mask"]
    common = dict(n_heads=cfg.n_heads, d_head=cfg.d_head, causal=cfg.causal, dtype=cfg.dtype,
                  name="attention")
    chunked = dict(norm_eps=cfg.layer_norm_eps, output_dropout=cfg.dropout_rate,
                   position_chunk_len=cfg.ff_chunk_size, sequence_axis=cfg.sequence_axis)
    if self.attention_type == "lsh":
      attention = LSHSelfAttention(
          n_hashes=cfg.n_hashes, n_buckets=cfg.n_buckets, chunk_len=cfg.lsh_chunk_len,
          n_chunks_before=cfg.lsh_n_chunks_before, n_chunks_after=cfg.lsh_n_chunks_after,
          strict_causal=cfg.strict_causal, attention_dropout=cfg.lsh_attention_dropout,
          correct_duplicates=cfg.correct_duplicates, **chunked, **common)
      result = attention(x, mask, deterministic=deterministic, rotations=rotations, norm=norm,
                         rebuild=rebuild, buckets=state, return_buckets=save_state,
                         decode=decode)
      return result if save_state else self._grads(result, rebuild)
    if self.attention_type == "local":
      attention = LocalSelfAttention(
          chunk_len=cfg.local_chunk_len, n_chunks_before=cfg.local_n_chunks_before,
          n_chunks_after=cfg.local_n_chunks_after, wrap=cfg.local_wrap,
          attention_dropout=cfg.attention_dropout, **chunked, **common)
      out = self._grads(attention(x, mask, deterministic=deterministic, norm=norm,
                                  rebuild=rebuild, decode=decode), rebuild)
      return (out, None) if save_state else out
    if rebuild is not None:
      return None
    h = layer_norm(x, *norm, cfg.layer_norm_eps).astype(cfg.dtype)
    if self.attention_type == "full":
      h = FullSelfAttention(attention_dropout=cfg.attention_dropout, **common)(
          h, mask, deterministic=deterministic, decode=decode)
    elif self.attention_type == "shared_qk_full":
      h = FullSelfAttention(shared_qk=True, attention_dropout=cfg.lsh_attention_dropout,
                            **common)(h, mask, deterministic=deterministic, decode=decode)
    else:
      raise ValueError(f"unknown attention type {self.attention_type!r}")
    out = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    return (out, None) if save_state else out

  @staticmethod
  def _grads(result, rebuild):
    """The attention's rebuild result with the norm's gradients put in this block's tree."""
    if rebuild is None or result is None:
      return result
    y, dx, grads, (d_scale, d_bias) = result
    return y, dx, {"norm": {"scale": d_scale, "bias": d_bias}, "attention": grads}


class FeedForwardBlock(nn.Module):
  """G of a reversible layer: LayerNorm `norm` -> ChunkedFeedForward `feed_forward`.

  Position-wise: `ReversibleStack` rebuilds and differentiates it chunk by chunk.
  """
  config: ReformerConfig

  @property
  def position_chunk(self) -> Optional[int]:
    return self.config.ff_chunk_size

  @nn.compact
  def __call__(self, x: jnp.ndarray, aux: Dict[str, Any], layer_aux: Any,
               deterministic: bool, chunk_index: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """`x` `[batch, length, d_model]` -> `[batch, length, d_model]`; `aux`, `layer_aux` unused.

    `chunk_index`: see `ChunkedFeedForward`.
    """
    del aux, layer_aux
    cfg = self.config
    norm = LayerNormParams(x.shape[-1], name="norm")()
    return ChunkedFeedForward(d_ff=cfg.d_ff, chunk_size=cfg.ff_chunk_size,
                              activation=cfg.ff_activation, dropout_rate=cfg.dropout_rate,
                              norm_eps=cfg.layer_norm_eps, dtype=cfg.dtype,
                              name="feed_forward")(x, deterministic=deterministic, norm=norm,
                                                   chunk_index=chunk_index)


class LMHead(nn.Module):
  """Output projection `kernel [2d, vocab]` (+ `bias [vocab]`), optionally fused with the loss."""
  vocab_size: int
  use_bias: bool = True
  loss_chunk_len: int = 4096
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, targets: Optional[jnp.ndarray] = None,
               weights: Optional[jnp.ndarray] = None, transform=None, transform_params=None):
    """Logits `[batch, length, vocab]`, or with `targets` the chunked loss sums.

    `hidden`: `[batch, length, d]` or parts concatenated along the features; `transform`:
    a pure position-wise `transform(transform_params, h, chunk_index)` applied to each
    chunk first (see `chunked_cross_entropy`).
    """
    parts = tuple(hidden) if isinstance(hidden, (list, tuple)) else (hidden,)
    d = sum(p.shape[-1] for p in parts)
    kernel = logical_axes.param(self, "kernel", nn.initializers.lecun_normal(),
                                (d, self.vocab_size), (logical_axes.EMBED, logical_axes.VOCAB))
    bias = (logical_axes.param(self, "bias", nn.initializers.zeros, (self.vocab_size,),
                               (logical_axes.VOCAB,)) if self.use_bias else None)
    dtype = self.dtype

    def cast(params, h, index):
      return (h if transform is None else transform(params, h, index)).astype(dtype)

    if targets is not None:
      return chunked_cross_entropy(parts, kernel, bias, targets, weights, self.loss_chunk_len,
                                   transform=cast, transform_params=transform_params)
    hidden = cast(transform_params, jnp.concatenate(parts, axis=-1), jnp.int32(0))
    logits = jnp.einsum("bld,dv->blv", hidden, kernel.astype(self.dtype))
    if bias is not None:
      logits = logits + bias.astype(self.dtype)[None, None, :]
    return logits


class ReformerLM(nn.Module):
  """Reformer language model; see the module docstring for the layout and parameter tree.

  Randomness: rng stream 'dropout' (unless deterministic) and 'hash' (LSH rotations; not
  needed when `lsh_rotations` are given or no layer is "lsh"). Cached decoding: `prefill`,
  then `decode_step` (apply with `method=` and `mutable=['cache']`).
  """
  config: ReformerConfig

  @nn.compact
  def __call__(self, tokens: jnp.ndarray, mask: Optional[jnp.ndarray] = None, *,
               targets: Optional[jnp.ndarray] = None, weights: Optional[jnp.ndarray] = None,
               positions: Optional[jnp.ndarray] = None,
               lsh_rotations: Optional[Union[jnp.ndarray, Sequence[jnp.ndarray]]] = None,
               deterministic: Optional[bool] = None, decode: Optional[DecodeMode] = None):
    """Runs the model.

    Args:
      tokens: `[batch, length]` int token ids in `[0, vocab_size)`; checked when concrete,
        under `jit` other ids (negative ones too) give NaN.
      mask: `[batch, length]` bool, False = padding (never attended to). None = all real.
      targets: `[batch, length]` int in `[0, vocab_size)` (checked when concrete); if given,
        returns the loss sums instead of logits.
      weights: `[batch, length]` loss weights; default `mask` (or ones).
      positions: `[batch, length]` int positions; default `0 .. length - 1`.
      lsh_rotations: one `[n_heads, d_head, n_hashes, sum(factors) // 2]` array (`factors`:
        the factors of a factorised `n_buckets`, or `(n_buckets,)`) used by every "lsh"
        layer, or a sequence with one array per "lsh" layer; None draws them from the
        'hash' rng.
      deterministic: overrides `config.deterministic` (True disables dropout).
      decode: cached decoding, as set by `prefill` and `decode_step`.

    Returns:
      Logits `[batch, length, vocab]` (float32 unless config.dtype), or with `targets` a
      dict of float32 sums {'loss': weighted cross-entropy, 'weight': weights,
      'correct': weighted count of argmax == target}. Without targets, the final hidden
      states `[batch, length, 2 * d_model]` (after `final_norm` and dropout) are sown as
      `intermediates/final_hidden` (`mutable=['intermediates']` to read them). With
      `decode`, logits `[batch, vocab]` of each sequence's last (real) position.
    """
    cfg = self.config
    deterministic = cfg.deterministic if deterministic is None else deterministic
    check_inputs(cfg, tokens, mask=mask, targets=targets, weights=weights, positions=positions)
    if targets is not None:
      check_ids(targets, cfg.vocab_size, "target ids", "vocab_size",
                "set ReformerConfig.vocab_size above the largest id, or map the ids into range")
    if weights is not None and targets is None:
      raise ValueError("weights are only used with targets; pass targets too")
    if decode is not None and targets is not None:
      raise ValueError("decoding computes logits, not a loss; pass no targets")
    (x1, x2), final, final_params = encode(self, tokens, mask, positions, lsh_rotations,
                                           deterministic, decode)
    head = LMHead(cfg.vocab_size, cfg.lm_head_bias, cfg.loss_chunk_len, cfg.dtype,
                  name="lm_head")
    if targets is None:
      if isinstance(decode, Prefill):  # only each prompt's last position is continued
        last = (decode.lengths - 1)[:, None, None]
        x1, x2 = (jnp.take_along_axis(t, last, axis=1) for t in (x1, x2))
      h = final(final_params, jnp.concatenate([x1, x2], axis=-1), jnp.int32(0))
      self.sow("intermediates", "final_hidden", h)
      logits = head(h)
      return logits if decode is None else logits[:, 0]
    if weights is None:
      weights = jnp.ones(tokens.shape, jnp.float32) if mask is None else mask
    loss, weight, correct = head((x1, x2), targets, weights, transform=final,
                                 transform_params=final_params)
    return {"loss": loss, "weight": weight, "correct": correct}

  def prefill(self, tokens: jnp.ndarray, lengths: jnp.ndarray, cache_len: int,
              lsh_rotations: Optional[Union[jnp.ndarray, Sequence[jnp.ndarray]]] = None
              ) -> jnp.ndarray:
    """Runs the prompts and writes the 'cache' collection, each attention layer its own.

    Apply with `method=ReformerLM.prefill, mutable=['cache']`; deterministic. The
    embedding, positions, layers and head are those of `__call__`.

    Args:
      tokens: int `[batch, P]` prompts, right-padded (anything after `lengths`).
      lengths: int `[batch]` prompt lengths, 1 .. P.
      cache_len: positions the cache holds, prompt and new tokens (>= P); a static int.
      lsh_rotations: as in `__call__`; required with "lsh" layers, and the same for every
        `decode_step`.

    Returns:
      Logits `[batch, vocab]` of each prompt's last token.
    """
    lengths = lengths.astype(jnp.int32)
    mask = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return self(tokens, mask, lsh_rotations=lsh_rotations, deterministic=True,
                decode=Prefill(lengths, cache_len))

  def decode_step(self, tokens: jnp.ndarray, positions: jnp.ndarray,
                  lsh_rotations: Optional[Union[jnp.ndarray, Sequence[jnp.ndarray]]] = None
                  ) -> jnp.ndarray:
    """One new token per sequence from the 'cache' collection of `prefill` (updated).

    Apply with `method=ReformerLM.decode_step, mutable=['cache']`; deterministic.

    Args:
      tokens: int `[batch]` new tokens.
      positions: int `[batch]` their positions; each sequence's earlier ones are cached.
      lsh_rotations: those given to `prefill`.

    Returns:
      Logits `[batch, vocab]` after each new token.
    """
    positions = positions.astype(jnp.int32)
    return self(tokens[:, None], positions=positions[:, None], lsh_rotations=lsh_rotations,
                deterministic=True, decode=Step(positions))


def check_inputs(cfg: ReformerConfig, tokens: jnp.ndarray, **arrays: Optional[jnp.ndarray]
                 ) -> None:
  """Raises ValueError unless `tokens` are `[batch, length]` ids in `[0, vocab_size)`
  (checked when concrete) and every given one of `arrays` is `[batch, length]`."""
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"tokens must be [batch, length] integers, got {tokens.shape} "
                     f"{tokens.dtype}")
  check_ids(tokens, cfg.vocab_size, "token ids", "vocab_size",
            "set ReformerConfig.vocab_size above the largest id, or map the ids into range")
  if tokens.shape[1] < 1:
    raise ValueError(f"tokens must hold at least one position, got shape {tokens.shape}; "
                     "drop empty sequences")
  for name, value in arrays.items():
    if value is not None and value.shape != tokens.shape:
      raise ValueError(f"{name} must be [batch, length] = {tokens.shape}, got {value.shape}")


def encode(module: nn.Module, tokens: jnp.ndarray, mask: Optional[jnp.ndarray],
           positions: Optional[jnp.ndarray], lsh_rotations, deterministic: bool,
           decode: Optional[DecodeMode] = None):
  """The shared body, called inside `module`'s compact `__call__` (`module.config`).

  Creates `module`'s `token_embed`, `positional`, `encoder` and `final_norm` parameters
  and runs tokens `[batch, length]` through the embedding and the reversible stack.
  Arguments as `ReformerLM.__call__` (checked with `check_inputs`); `decode` goes to
  the stack (`ReversibleStack`).

  Returns:
    `((x1, x2), final, final_params)`: the two output streams `[batch, length, d_model]`
    and the pure position-wise `final(final_params, h, chunk_index)` (final_norm, then
    dropout) of `h = concat(x1, x2)` `[batch, chunk, 2 * d_model]`, to apply per chunk.
  """
  cfg = module.config
  batch, length = tokens.shape
  if mask is not None:
    mask = mask.astype(bool)
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(length)[None, :], (batch, length))

  types = cfg.layer_attention_types()
  rotations = layer_rotations(lsh_rotations, types)

  table = nn.Embed(cfg.vocab_size, cfg.d_model, name="token_embed").embedding
  logical_axes.declare(module, "token_embed",
                       {"embedding": (logical_axes.VOCAB, logical_axes.EMBED)})
  drop = not deterministic and cfg.dropout_rate > 0.
  embed_rng, final_rng = (module.make_rng("dropout") if drop else None for _ in range(2))
  chunk = cfg.ff_chunk_size or length

  def embed(params, chunk_tokens, index):  # [b, c] -> [b, c, d_model]; not stored
    table, rng = params
    rng = None if rng is None else jax.random.fold_in(rng, index)
    x = dropout(lookup(table, chunk_tokens), cfg.dropout_rate, rng)
    return x.astype(cfg.stream_dtype)

  x = map_positions(embed, (table, embed_rng), tokens, chunk)
  if cfg.positional != "none":
    x = x + position_encodings(cfg, positions).astype(x.dtype)
  blocks = tuple((AttentionBlock(cfg, t, parent=None), FeedForwardBlock(cfg, parent=None))
                 for t in types)
  x1, x2 = ReversibleStack(blocks, scan=cfg.scan_layers, name="encoder")(
      x, x, {"mask": mask}, deterministic=deterministic, layer_aux=rotations, decode=decode)
  final_norm = LayerNormParams(2 * cfg.d_model, name="final_norm")()

  def final(params, h, index):  # final_norm -> dropout, per chunk of concat(x1, x2)
    norm, rng = params
    rng = None if rng is None else jax.random.fold_in(rng, index)
    return dropout(layer_norm(h, *norm, cfg.layer_norm_eps), cfg.dropout_rate, rng)

  return (x1, x2), final, (final_norm, final_rng)


def position_encodings(cfg: ReformerConfig, positions: jnp.ndarray) -> jnp.ndarray:
  """Position encodings `[batch, length, d_model]` (float32) of `positions` `[batch, length]`;
  called inside a compact `__call__` (creates its `positional` parameters)."""
  if cfg.positional == "axial":
    return AxialPositionalEmbedding(cfg.resolved_axial_shape, cfg.resolved_axial_dims,
                                    cfg.d_model, name="positional")(positions)
  if cfg.positional == "learned":
    return LearnedPositionalEmbedding(cfg.max_len, cfg.d_model, name="positional")(positions)
  return sinusoidal_positions(positions, cfg.d_model)


def layer_rotations(lsh_rotations, types: Tuple[str, ...]):
  """`lsh_rotations` as one entry per layer (None for non-LSH layers), or None."""
  if lsh_rotations is None:
    return None
  n_lsh = types.count("lsh")
  if n_lsh == 0:
    raise ValueError("lsh_rotations were given but no layer has attention type 'lsh'")
  if isinstance(lsh_rotations, (list, tuple)):
    if len(lsh_rotations) != n_lsh:
      raise ValueError(f"lsh_rotations has {len(lsh_rotations)} arrays but the model has "
                       f"{n_lsh} 'lsh' layers; pass one per LSH layer or a single array")
    per_lsh = iter(lsh_rotations)
  else:
    per_lsh = iter([lsh_rotations] * n_lsh)
  return tuple(next(per_lsh) if t == "lsh" else None for t in types)
