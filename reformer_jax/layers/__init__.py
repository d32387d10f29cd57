"""Reformer layers: pure functions for the math and thin flax.linen modules over them."""
from reformer_jax.layers.feed_forward import ChunkedFeedForward, chunked_feed_forward, feed_forward
from reformer_jax.layers.full_attention import FullSelfAttention, full_attention
from reformer_jax.layers.local_attention import LocalSelfAttention, local_attention
from reformer_jax.layers.lsh_attention import (LSHSelfAttention, draw_rotations, hash_vectors,
                                               lsh_attention, resolve_n_buckets)
from reformer_jax.layers.positional import (AxialPositionalEmbedding, LearnedPositionalEmbedding,
                                            sinusoidal_positions)
from reformer_jax.layers.reversible import ReversibleStack, reversible_layers

__all__ = [
    "AxialPositionalEmbedding", "ChunkedFeedForward", "FullSelfAttention",
    "LSHSelfAttention", "LearnedPositionalEmbedding", "LocalSelfAttention", "ReversibleStack",
    "chunked_feed_forward", "draw_rotations", "feed_forward", "full_attention", "hash_vectors",
    "local_attention", "lsh_attention", "resolve_n_buckets", "reversible_layers",
    "sinusoidal_positions",
]
