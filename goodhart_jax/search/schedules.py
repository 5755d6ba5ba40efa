"""Schedules for n, the number of coordinates a candidate changes at step i.

A schedule maps the iteration index `i` (a traced int32 scalar, counted from 0)
to n (an int32 scalar). Shapes stay static: the search samples
`max_edits(...)` positions per candidate and masks the unused ones.

* `constant` — GCG (Zou et al. 2023): n fixed (n = 1 in the original).
* `linear` — n goes linearly from `start` at i = 0 to `end` at
  i = num_iters - 1 (rounded to the nearest integer).
* `paper` — the authors' ACG annealing (Kwa et al. 2024, Table 2; Haize Labs
  2024): `int((1e5 / (i + 1)) ** 0.3) // 4 + 2`, which is 9 at i = 0 and 2
  from i = 984 on.
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
from jax import Array

Schedule = Callable[[Array], Array]

SCHEDULES = ("gcg", "constant", "linear", "paper")


def constant(n: int) -> Schedule:
    """n(i) = n (GCG)."""
    def schedule(i):
        return jnp.full(jnp.shape(i), n, jnp.int32)
    return schedule


def linear(start: int, end: int, num_iters: int) -> Schedule:
    """n(i) = round(start + (end - start) * i / (num_iters - 1)), clipped to the ends."""
    span = max(num_iters - 1, 1)

    def schedule(i):
        frac = jnp.clip(jnp.asarray(i, jnp.float32) / span, 0.0, 1.0)
        return jnp.round(start + (end - start) * frac).astype(jnp.int32)
    return schedule


def paper() -> Schedule:
    """n(i) = int((1e5 / (i + 1)) ** 0.3) // 4 + 2 (Kwa et al. 2024, ACG).

    float32 is exact here: (1e5 / (i + 1)) ** 0.3 crosses a multiple of 4 only
    at non-integer i (i + 1 = 984.3, 97.7, 25.3, 9.7, 4.6, 2.5, 1.5), far from
    any rounding boundary (checked against Python in the tests).
    """
    def schedule(i):
        x = (1e5 / (jnp.asarray(i, jnp.float32) + 1.0)) ** 0.3
        return (jnp.floor(x).astype(jnp.int32) // 4 + 2).astype(jnp.int32)
    return schedule


def paper_python(i: int) -> int:
    """The authors' formula in plain Python (the reference for `paper`).

    Args:
      i: the step, from 0.
    """
    return int((1e5 / (i + 1)) ** 0.3) // 4 + 2


def make_schedule(name: str, *, edits: int = 1, edits_start: int = 9,
                  edits_end: int = 2, num_iters: int = 1000) -> Schedule:
    """The schedule called `name` ("gcg" = "constant", "linear", "paper").

    Args:
      edits: n for "gcg" (constant).
      edits_start: n at step 0 for "linear".
      edits_end: n at the last step for "linear".
      num_iters: the number of steps.
    """
    if name in ("gcg", "constant"):
        return constant(edits)
    if name == "linear":
        return linear(edits_start, edits_end, num_iters)
    if name == "paper":
        return paper()
    raise ValueError(f"unknown schedule {name!r}; expected one of {SCHEDULES}")


def max_edits(name: str, *, edits: int = 1, edits_start: int = 9,
              edits_end: int = 2, num_iters: int = 1000) -> int:
    """The largest n the schedule reaches over `num_iters` steps (a static size).

    Args:
      name: the schedule (`make_schedule`).
      edits: as in `make_schedule`.
      edits_start: as in `make_schedule`.
      edits_end: as in `make_schedule`.
    """
    if name in ("gcg", "constant"):
        return edits
    if name == "linear":
        return max(edits_start, edits_end)
    if name == "paper":
        return paper_python(0)
    raise ValueError(f"unknown schedule {name!r}; expected one of {SCHEDULES}")
