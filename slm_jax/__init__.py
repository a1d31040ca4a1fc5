"""slm_jax: efficient small language models in JAX."""

__version__ = "0.1.0"
