"""Roots of monotone scalar functions by fixed-step bisection (jit- and vmap-able).

A fixed number of halvings, not a tolerance loop: the step count is static, so
the solve compiles to one `fori_loop`, vmaps over brackets and targets (a
batch of roots costs one loop), and gives the same bits on every call. Each
step costs one evaluation of f; the bracket shrinks 2^steps times. The default
reaches the float's resolution for brackets up to 2^12 times wider than the
root's magnitude (`default_steps`).

Used for: beta at a KL target (`mitigations`), a quantile threshold
(`mitigations`), the tail mass at a KL budget and the tilt multiplier at a KL
budget (`upweighting`), the multiplier of the sigmoid-of-mean optimum
(`mitigations`).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from goodhart_jax.floats import float_dtype

__all__ = ["Bisection", "bisect", "default_steps"]


class Bisection(NamedTuple):
    """The final bracket of a bisection; fields of the brackets' shape."""

    root: Array  # midpoint of the final bracket
    neg: Array  # its end on the side where f <= 0 (where `neg` started)
    pos: Array  # its end on the side where f > 0


def default_steps(dtype) -> int:
    """Halvings that shrink a bracket to the float's resolution: mantissa bits + 12 (35 float32, 64 float64)."""
    return jnp.finfo(dtype).nmant + 12


def bisect(f: Callable[[Array], Array], neg: ArrayLike, pos: ArrayLike, num_steps: int | None = None) -> Bisection:
    """A sign change of f between `neg` (f <= 0 there) and `pos` (f > 0 there), by bisection.

    Either end may be the larger, so an increasing f is solved with neg < pos
    and a decreasing f with neg > pos. At each step the midpoint replaces the
    end whose side it is on (f(mid) > 0: `pos`, else `neg`; NaN counts as
    <= 0). f is not evaluated at the ends: where they do not bracket a sign
    change, the result converges to the end whose side holds the whole
    bracket; callers check f at the root where that matters.

    Args:
      f: vectorised [...] -> [...], monotone between the ends (one sign change).
      neg, pos: [...] the bracket's ends (broadcast together; traced).
      num_steps: static number of halvings (default `default_steps` of the dtype).
    Returns:
      `Bisection` of [...] fields.
    """
    dtype = jnp.result_type(float_dtype(neg), float_dtype(pos))
    neg, pos = jnp.broadcast_arrays(jnp.asarray(neg, dtype), jnp.asarray(pos, dtype))
    steps = default_steps(dtype) if num_steps is None else int(num_steps)

    def body(_, st):
        a, b = st
        mid = 0.5 * (a + b)
        above = f(mid) > 0
        return jnp.where(above, a, mid), jnp.where(above, mid, b)

    a, b = jax.lax.fori_loop(0, steps, body, (neg, pos))
    return Bisection(0.5 * (a + b), a, b)
