"""Gao et al.'s scaling forms of gold reward against d = sqrt(KL), fitted by least squares with optax.

Gao, Schulman & Hilton (2023), "Scaling laws for reward model overoptimization", eqs. (1)-(2):

    best-of-n:  R(d) = d (alpha - beta d)
    RL:         R(d) = d (alpha - beta log d)          (d log d -> 0 as d -> 0)

R is the gain in gold reward (or true utility) over the base policy. Both forms
are linear in (alpha, beta): R = alpha f1(d) - beta f2(d) with f1 = d and
f2 = d^2 or d log d. The fit minimises the mean squared residual with optax's
L-BFGS (zoom line search) on column-scaled features, from alpha = beta = 0; on
this convex quadratic it reaches the least-squares solution (tested against
`np.linalg.lstsq` and `scipy.optimize.curve_fit`).

Public API:
  FORMS = ("bon", "rl");  gao_features(d [K], form) -> [K, 2]   # columns f1, -f2
  GaoFit(alpha, beta, r2, rmse, residuals [K])
  fit_gao(d [K], R [K], form="bon", steps=50) -> GaoFit          # r2 = 1 - SS_res / SS_tot (SS_tot about the mean)
  gao_curve(d [K], alpha, beta, form) -> [K]
  MIN_FIT_POINTS = 4;  too_few_fit_points(d [K]) -> reason or None

Glossary: K points.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

__all__ = ["FORMS", "GaoFit", "gao_features", "gao_curve", "fit_gao", "MIN_FIT_POINTS", "too_few_fit_points"]

FORMS = ("bon", "rl")

MIN_FIT_POINTS = 4
"""Gao's forms have two parameters (alpha, beta): with fewer than 4 distinct d > 0 a fit passes (nearly) exactly
through its points, and its alpha, beta and small residuals say nothing (callers null such fits with a reason)."""


class GaoFit(NamedTuple):
    """A least-squares fit of one of Gao's forms; scalar fields [] except residuals."""

    alpha: Array  # []
    beta: Array  # []
    r2: Array  # [] 1 - SS_res / SS_tot (SS_tot about the mean of R; nan when R is constant)
    rmse: Array  # [] sqrt(mean residual^2)
    residuals: Array  # [K] R - fit


def too_few_fit_points(d) -> str | None:
    """Why Gao's forms cannot be fitted to points at `d` ([K] sqrt(KL)): fewer than MIN_FIT_POINTS distinct d > 0
    (the reason, for a null fit row), else None."""
    d = np.asarray(d, float)
    distinct = np.unique(d[d > 0]).size
    if distinct >= MIN_FIT_POINTS:
        return None
    return f"{distinct} distinct d > 0 among {d.size} points; a fit of 2 parameters needs >= {MIN_FIT_POINTS}"


def gao_features(d: Array, form: str) -> Array:
    """[K, 2] columns (d, -d^2) for "bon" or (d, -d log d) for "rl" (0 at d = 0), so R = features @ (alpha, beta).

    Args:
      form: "bon" or "rl".
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    d = jnp.asarray(d)
    if form == "bon":
        f2 = d * d
    else:
        f2 = jnp.where(d > 0, d * jnp.log(jnp.where(d > 0, d, 1.0)), 0.0)
    return jnp.stack([d, -f2], axis=-1)


def gao_curve(d: Array, alpha: Array, beta: Array, form: str) -> Array:
    """R(d) of the form with the given (alpha, beta): [K]."""
    return gao_features(d, form) @ jnp.stack([jnp.asarray(alpha), jnp.asarray(beta)]).astype(jnp.asarray(d).dtype)


def fit_gao(d: Array, R: Array, form: str = "bon", steps: int = 50) -> GaoFit:
    """Least-squares fit of Gao's best-of-n ("bon") or RL ("rl") form with optax L-BFGS.

    Args:
      d: [K] sqrt(KL) per point, >= 0.
      R: [K] gain in gold reward over the base policy at each point.
      form: "bon" (R = d (alpha - beta d)) or "rl" (R = d (alpha - beta log d)); static.
      steps: L-BFGS iterations (static); a 2-parameter quadratic needs a handful.
    Returns:
      `GaoFit`.
    References:
      Gao, Schulman & Hilton (2023), Section 3 (functional forms).
    """
    F = gao_features(d, form)
    R = jnp.asarray(R, F.dtype)
    col = jnp.maximum(jnp.max(jnp.abs(F), axis=0), jnp.finfo(F.dtype).tiny)  # [2] column scales
    scale = jnp.maximum(jnp.max(jnp.abs(R)), jnp.finfo(F.dtype).tiny)
    G, y = F / col, R / scale

    def loss(p):
        return jnp.mean(jnp.square(G @ p - y))

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry, _):
        p, s = carry
        v, g = value_and_grad(p, state=s)
        upd, s = opt.update(g, s, p, value=v, grad=g, value_fn=loss)
        return (optax.apply_updates(p, upd), s), None

    p0 = jnp.zeros((2,), F.dtype)
    (p, _), _ = jax.lax.scan(step, (p0, opt.init(p0)), None, length=steps)
    coef = p / col * scale
    res = R - F @ coef
    ss_tot = jnp.sum(jnp.square(R - jnp.mean(R)))
    r2 = jnp.where(ss_tot > 0, 1.0 - jnp.sum(jnp.square(res)) / jnp.where(ss_tot > 0, ss_tot, 1.0), jnp.nan)
    return GaoFit(coef[0], coef[1], r2, jnp.sqrt(jnp.mean(jnp.square(res))), res)
