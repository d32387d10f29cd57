"""Reformer layers: thin flax.linen modules over pure functions.

The pure functions live in the submodules (`reformer_jax.layers.lsh_attention.lsh_attention`,
`...local_attention.local_attention`, `...full_attention.full_attention`,
`...feed_forward.chunked_feed_forward`, `...reversible.reversible_layers`); they are not
re-exported here so that they do not shadow the submodules of the same name.
"""
from reformer_jax.layers.feed_forward import ChunkedFeedForward
from reformer_jax.layers.full_attention import FullSelfAttention
from reformer_jax.layers.local_attention import LocalSelfAttention
from reformer_jax.layers.lsh_attention import LSHSelfAttention, draw_rotations, resolve_n_buckets
from reformer_jax.layers.positional import (AxialPositionalEmbedding, LearnedPositionalEmbedding,
                                            sinusoidal_positions)
from reformer_jax.layers.reversible import ReversibleStack, reversible_layers

__all__ = [
    "AxialPositionalEmbedding", "ChunkedFeedForward", "FullSelfAttention", "LSHSelfAttention",
    "LearnedPositionalEmbedding", "LocalSelfAttention", "ReversibleStack", "draw_rotations",
    "resolve_n_buckets", "reversible_layers", "sinusoidal_positions",
]
