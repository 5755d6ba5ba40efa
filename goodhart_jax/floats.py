"""The floating dtype a computation runs in, read off its input."""
from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

__all__ = ["float_dtype", "as_float"]


def float_dtype(x: ArrayLike) -> jnp.dtype:
    """x's dtype when it is floating, else JAX's default float (float64 under `jax.enable_x64`)."""
    x = jnp.asarray(x)
    return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.dtype(jnp.result_type(float))


def as_float(x: ArrayLike) -> Array:
    """x as an array of `float_dtype(x)`: floats keep their precision, integers become the default float."""
    x = jnp.asarray(x)
    return x.astype(float_dtype(x))
