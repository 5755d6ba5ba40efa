"""goodhart_jax: runnable mathematics of reward misspecification in JAX."""

__version__ = "0.1.0"
