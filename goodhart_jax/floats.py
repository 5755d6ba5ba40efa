"""The floating dtype a computation runs in, read off its input; host-side checks of a sweep's values."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

__all__ = ["float_dtype", "as_float", "check_sweep"]


def float_dtype(x: ArrayLike) -> jnp.dtype:
    """x's dtype when it is floating, else JAX's default float (float64 under `jax.enable_x64`)."""
    x = jnp.asarray(x)
    return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.dtype(jnp.result_type(float))


def as_float(x: ArrayLike) -> Array:
    """x as an array of `float_dtype(x)`: floats keep their precision, integers become the default float."""
    x = jnp.asarray(x)
    return x.astype(float_dtype(x))


def check_sweep(values, name: str, plural: str, must: str = "finite", ok=np.isfinite) -> np.ndarray:
    """`values` as a 1-D float array ([K]; a scalar gives [1]), or ValueError naming the parameter.

    Args:
      values: a scalar or [K] values.
      name, plural: the parameter's name for one value and for the sweep ("beta", "betas").
      must: what each value must be, for the message ("finite and > 0").
      ok: [K] float -> [K] bool, the values that pass (NaN must fail).
    Returns:
      [K] float64 NumPy array, K >= 1.
    """
    a = np.atleast_1d(np.asarray(values, dtype=float))
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{plural} must be a non-empty 1-D array")
    bad = a[~ok(a)]
    if bad.size:
        raise ValueError(f"{name} must be {must}, got {bad[0]:g}")
    return a
