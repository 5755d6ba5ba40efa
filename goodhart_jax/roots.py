"""Roots of monotone scalar functions by fixed-step bisection (jit- and vmap-able).

A fixed number of halvings, not a tolerance loop: the step count is static, so
the solve compiles to one `fori_loop`, vmaps over brackets and targets (a
batch of roots costs one loop), and gives the same bits on every call. Each
step costs one evaluation of f; the bracket shrinks 2^steps times. The default
reaches the float's resolution for brackets up to 2^12 times wider than the
root's magnitude (`default_steps`).

Used for: beta at a KL target (`mitigations`), a quantile threshold
(`mitigations`), the tail mass at a KL budget and the tilt multiplier at a KL
budget (`upweighting`), the multiplier of the sigmoid-of-mean optimum (a grid,
then a bisection: `mitigations`), the tilt's mode and reach (`tilting`), and a
bump's level crossings (`quadrature.locate_bump`).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from goodhart_jax.floats import float_dtype

__all__ = ["Bisection", "bisect", "bisect_then", "default_steps"]


class Bisection(NamedTuple):
    """The final bracket of a bisection; fields of the brackets' shape."""

    root: Array  # midpoint of the final bracket
    neg: Array  # its end on the side where f <= 0 (where `neg` started)
    pos: Array  # its end on the side where f > 0


def default_steps(dtype) -> int:
    """Halvings that shrink a bracket to the float's resolution: mantissa bits + 12 (35 float32, 64 float64).

    Args:
      dtype: a float dtype.
    """
    return jnp.finfo(dtype).nmant + 12


def _bracket(neg: ArrayLike, pos: ArrayLike, num_steps: int | None) -> tuple[Array, Array, int]:
    """The ends in their common float dtype, broadcast together, and the number of halvings."""
    dtype = jnp.result_type(float_dtype(neg), float_dtype(pos))
    neg, pos = jnp.broadcast_arrays(jnp.asarray(neg, dtype), jnp.asarray(pos, dtype))
    return neg, pos, default_steps(dtype) if num_steps is None else int(num_steps)


def _above(value: Array) -> Array:
    """Whether f's value is on `pos`'s side: True values of a boolean f, values > 0 else (NaN: False)."""
    return value if value.dtype == jnp.bool_ else value > 0


def bisect(f: Callable[[Array], Array], neg: ArrayLike, pos: ArrayLike, num_steps: int | None = None) -> Bisection:
    """A sign change of f between `neg` (f <= 0 there) and `pos` (f > 0 there), by bisection.

    Either end may be the larger, so an increasing f is solved with neg < pos
    and a decreasing f with neg > pos. At each step the midpoint replaces the
    end whose side it is on (f(mid) > 0: `pos`, else `neg`; NaN counts as
    <= 0). A boolean f is a predicate: True is `pos`'s side. f is not evaluated
    at the ends: where they do not bracket a sign change, the result converges
    to the end whose side holds the whole bracket; callers check f at the root
    where that matters.

    Args:
      f: vectorised [...] -> [...] (float or bool), monotone between the ends (one sign change).
      neg, pos: [...] the bracket's ends (broadcast together; traced).
      num_steps: static number of halvings (default `default_steps` of the dtype).
    Returns:
      `Bisection` of [...] fields.
    """
    neg, pos, steps = _bracket(neg, pos, num_steps)

    def body(_, st):
        a, b = st
        mid = 0.5 * (a + b)
        above = _above(f(mid))
        return jnp.where(above, a, mid), jnp.where(above, mid, b)

    a, b = jax.lax.fori_loop(0, steps, body, (neg, pos))
    return Bisection(0.5 * (a + b), a, b)


def bisect_then(f: Callable[[Array], tuple[Array, Any]], neg: ArrayLike, pos: ArrayLike, at: str = "neg",
                num_steps: int | None = None, *, grid: ArrayLike | None = None,
                score: Callable[[Any], Array] | None = None) -> tuple[Bisection, Any]:
    """`bisect` on f's first output, then f's second output at the final bracket's `neg` end or midpoint.

    The same bracket as `bisect(lambda x: f(x)[0], neg, pos)`, and the result
    of `f(end)[1]` (to the rounding of f's compiled code, which XLA may fuse
    differently inside the loop: a few ulps at most), but f is traced once: the loop runs one step more, whose point
    is the chosen end and whose bracket is left as it was. A program calling an
    expensive f (a quadrature) then compiles one copy of it, not two.

    With a `grid`, the same loop first evaluates f at each grid point and
    brackets the one where `score` of f's result is largest (the first on ties;
    NaN scores lose) by its two neighbours, `neg` standing left of the first
    point and `pos` right of the last: a maximum on a grid, refined by bisecting
    its stationarity condition (f's value) between the neighbours.

    f's results of every pass are stacked ([J + steps + 1, ...]) and the last kept:
    meant for small results (moments), not for large arrays.

    Args:
      f: x [...] -> (value [...], result pytree), value monotone between the ends as in `bisect`.
      neg, pos: [...] the bracket's ends (traced); [] with a grid.
      at: "neg" (the end where f <= 0) or "root" (the final midpoint).
      num_steps: static number of halvings (default `default_steps` of the dtype).
      grid: [J] points, increasing from `neg` towards `pos` (optional).
      score: f's result -> [] the value maximised on the grid (required with a grid).
    Returns:
      (`Bisection`, f's result at the chosen point).
    """
    if at not in ("neg", "root"):
        raise ValueError(f'at must be "neg" or "root", got {at!r}')
    if (grid is None) != (score is None):
        raise ValueError("grid and score go together")
    neg, pos, steps = _bracket(neg, pos, num_steps)
    J = 0 if grid is None else int(jnp.shape(grid)[0])
    if J:
        grid = jnp.asarray(grid, neg.dtype)
        ends = jnp.concatenate([neg[None], grid, pos[None]])  # [J + 2]: the grid with its outer neighbours

    def body(st, i):
        a, b, g = st
        if J:  # entering the bisection (i = J): bracket the best grid point by its neighbours
            k = jnp.argmax(jnp.where(jnp.isnan(g), -jnp.inf, g))
            start = i == J
            a, b = jnp.where(start, ends[k], a), jnp.where(start, ends[k + 2], b)
        mid = 0.5 * (a + b)
        last = i == J + steps
        x = jnp.where(last, a, mid) if at == "neg" else mid
        if J:
            on_grid = i < J
            x = jnp.where(on_grid, grid[jnp.minimum(i, J - 1)], x)
        value, aux = f(x)
        above = _above(value)
        move = ~last  # the last pass only evaluates
        if J:
            move = move & ~on_grid
            g = jnp.where(on_grid, g.at[jnp.minimum(i, J - 1)].set(score(aux)), g)
        return (jnp.where(move & ~above, mid, a), jnp.where(move & above, mid, b), g), aux

    # A scan, its results stacked over the passes and the last one kept: a loop carrying f's result would need
    # its structure first (jax.eval_shape: one more trace of f, ~1 s for a tilt).
    g0 = jnp.full((J,), -jnp.inf, neg.dtype)
    (a, b, _), auxs = jax.lax.scan(body, (neg, pos, g0), jnp.arange(J + steps + 1))
    return Bisection(0.5 * (a + b), a, b), jax.tree.map(lambda y: y[-1], auxs)
