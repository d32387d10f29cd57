"""Test-wide JAX settings: CPU, the entry points' XLA flags, float32 matmuls at full
precision, strict shapes."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

from reformer_jax.trainer import cli  # noqa: E402

# The entry points' XLA flags, before any test starts the backend: experiments compare
# in-process compiles with their subprocess workers' (which configure first).
cli.configure()
jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_numpy_rank_promotion", "raise")
