"""Test-wide JAX settings: CPU, the entry points' XLA flags, float32 matmuls at full
precision, strict shapes."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA:CPU's backend (LLVM) optimisations off for the whole suite, subprocesses included (they
# inherit XLA_FLAGS; those that add a device count append to it): the tests compile hundreds
# of tiny programs, whose machine-code optimisation costs more than running them (about 40%
# of a model test module's CPU time). The HLO passes and buffer assignment, which the memory
# tests read, are the same.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

import jax  # noqa: E402

from reformer_jax.trainer import cli  # noqa: E402

# The entry points' XLA flags, before any test starts the backend: experiments compare
# in-process compiles with their subprocess workers' (which configure first).
cli.configure()
jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_numpy_rank_promotion", "raise")
