"""reformer_jax: the Reformer (Kitaev, Kaiser, Levskaya 2020) in JAX/Flax."""
__version__ = "0.1.0"
