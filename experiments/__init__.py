"""Memory and speed benchmarks of reformer_jax (run them as `python -m experiments.NAME`)."""
