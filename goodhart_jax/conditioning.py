"""Optimisation as conditioning: E[V | X + V >= t] for independent X (error) and V (utility).

    E[V | X+V >= t] = ∫ v f_V(v) Fbar_X(t - v) dv / ∫ f_V(v) Fbar_X(t - v) dv,

and the denominator is P(X + V >= t). Theorem 5 (Kwa et al. 2024): X
subexponential and V lighter-tailed give E[V | X+V >= t] -> E[V] (catastrophic
Goodhart). Theorem 8: Fbar_X(t+1)/Fbar_X(t) -> 0 (X lighter than exponential)
gives -> infinity. Exponential error is the boundary: the limit is the mean of
V's exponential tilt by the rate, E[V e^{rate V}] / E[e^{rate V}].

Quadrature. The log-integrand log f_V(v) + log Fbar_X(t - v) is evaluated in
log space, so nothing underflows even where P(X+V >= t) is e^-2500. It can have
two bumps (both tails heavy: v near V's centre and v near t) and polynomial
tails, which defeat uniform panels. So the integral is a double-exponential
rule split at breakpoints — V's kink, the step t - kink(X) of Fbar_X(t - v),
and the located bump's peak and level crossings — tanh-sinh on finite pieces
and exp-sinh on the infinite ends (`goodhart_jax.quadrature`). Graded nodes
cluster geometrically at every breakpoint, so a bump of any width at a
breakpoint and algebraic tails are both integrated to ~1e-10.

Monte Carlo. `threshold_mc` integrates X out exactly (a conditional / Rao-
Blackwellised estimator: E[V 1{X > t - V}] = E_V[V Fbar_X(t - V)]) and
importance-samples V (`goodhart_jax.importance`) from a defensive mixture of
V's own law and Student-t(3) families at the integrand's mode (one narrow, one
wide, with widths read off the located bump) and at the step t - kink(X). The
weights are bounded by 4 Fbar_X <= 4, so the self-normalised estimate and its
delta-method standard error stay useful at any t; plain rejection sampling
would keep a fraction P(X+V >= t) of the draws (e^-2500 at t = 100).

Footnote 4: a dependent pair, V ~ N(0, 1) and X | V ~ N(0, 4) when |V| <= 1
else X = 0, for which E[V | X+V >= t] stays bounded although X is light-tailed
given V (`footnote4`).

Glossary: K sweep points (thresholds t), S Monte-Carlo samples, C proposal centres.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.special import log_ndtr

from goodhart_jax.floats import as_float
from goodhart_jax.importance import snis, stratified_mixture
from goodhart_jax.quadrature import DROPS, Bump, de_moments, locate_bump, log_de_quadrature
from goodhart_jax.tails import Family, parse

__all__ = [
    "ThresholdResult", "MCResult", "log_de_quadrature", "threshold", "sweep_threshold", "threshold_mc",
    "sweep_threshold_mc", "footnote4", "footnote4_mc", "check_thresholds", "exponential_limit",
    "integrand_mode",
]

class ThresholdResult(NamedTuple):
    """E[V | X + V >= t] by quadrature; fields [] or [K]."""

    E_V: Array  # E[V | X + V >= t]
    log_p: Array  # log P(X + V >= t)


class MCResult(NamedTuple):
    """Importance-sampled Monte Carlo estimates; fields [] or [K]."""

    E_V: Array  # self-normalised estimate of E[V | X + V >= t]
    se: Array  # its delta-method standard error
    log_p: Array  # estimate of log P(X + V >= t)
    ess: Array  # effective sample size (sum w)^2 / sum w^2


# ----------------------------------------------------------------------------
# Independent X and V.


def _log_integrand(error: Family, utility: Family, t: Array) -> Callable:
    return lambda v: utility.log_prob(v) + error.log_sf(t - v)


def _breaks(error: Family, utility: Family, t: Array) -> tuple[Array, Array, Bump]:
    """(breaks [2 + 2 D + 1], the step t - kink(X), the integrand's bump)."""
    log_g = _log_integrand(error, utility, t)
    c_v = jnp.asarray(utility.kink(), t.dtype)
    edge = jnp.asarray(t - error.kink(), t.dtype)
    bump = locate_bump(log_g, jnp.stack([c_v, edge]), t.dtype)
    return jnp.concatenate([jnp.stack([c_v, edge]), bump.points()]), edge, bump


def integrand_mode(error: Family, utility: Family, t: Array) -> Array:
    """The maximiser of f_V(v) Fbar_X(t - v) over v: where the conditioned V lives."""
    return _breaks(error, utility, as_float(t))[2].mode


def threshold(error: Family, utility: Family, t: Array) -> ThresholdResult:
    """E[V | X + V >= t] and log P(X + V >= t) for independent X ~ error, V ~ utility.

    E[V | X+V >= t] = ∫ v f_V(v) Fbar_X(t-v) dv / ∫ f_V(v) Fbar_X(t-v) dv,
    integrated in log space (Theorems 5 and 8 of Kwa et al. 2024).

    Args:
      error: family of X.
      utility: family of V.
      t: [] finite threshold.
    Returns:
      `ThresholdResult` with [] fields.
    """
    t = as_float(t)
    m = de_moments(_log_integrand(error, utility, t), _breaks(error, utility, t)[0], utility.support_lower(),
                   t.dtype)
    return ThresholdResult(m.mean, m.log_Z)


sweep_threshold = jax.jit(jax.vmap(threshold, in_axes=(None, None, 0)))
"""Jitted entry point: `sweep_threshold(error, utility, ts [K]) -> ThresholdResult` of [K].

To sweep family parameters too, stack same-named families leaf-wise and vmap
`threshold` over them (they are pytrees).
"""


_PROPOSAL_DF = 3.0


def _student_t(loc: Array, scale: Array) -> Family:
    """A Student-t(3) proposal at `loc` with `scale` (traced)."""
    return Family("student_t", dict(df=jnp.asarray(_PROPOSAL_DF, loc.dtype), loc=loc, scale=scale))


def _importance(key: Array, log_g: Callable, base: Family, centres: Array, scales: Array,
                num_samples: int, dtype) -> MCResult:
    """Self-normalised importance sampling of ∫ v g(v) dv / ∫ g(v) dv.

    Proposal: an equal deterministic mixture of `base` and Student-t(3)
    families at `centres` [C] with `scales` [C] (S // (C + 1) draws each).
    """
    proposals = [base] + [_student_t(centres[c], scales[c]) for c in range(centres.shape[0])]
    draws = stratified_mixture(key, proposals, max(num_samples // len(proposals), 1), dtype)
    lg = log_g(draws.y)
    log_w = jnp.where(jnp.isfinite(lg) & jnp.isfinite(draws.log_q), lg - draws.log_q, -jnp.inf)
    r = snis(log_w, draws.y)
    return MCResult(r.estimate, r.se, r.log_mean_w, r.ess)


def _widths(bump: Bump) -> tuple[Array, Array]:
    """Narrow and wide widths of a bump from its level crossings.

    For a Gaussian bump both equal its standard deviation (drops of 3 and 12
    are crossed at +-sqrt(6) and +-sqrt(24) sigma); a polynomial tail makes the
    wide one much wider, which the proposal needs to cover it.
    """
    i, j = DROPS.index(3.0), DROPS.index(12.0)
    narrow = (bump.right[i] - bump.left[i]) / (2.0 * math.sqrt(6.0))
    wide = (bump.right[j] - bump.left[j]) / (2.0 * math.sqrt(24.0))
    return narrow, jnp.maximum(wide, narrow)


def threshold_mc(key: Array, error: Family, utility: Family, t: Array, num_samples: int = 30_000) -> MCResult:
    """Importance-sampled Monte Carlo of E[V | X + V >= t] with a standard error.

    X is integrated out exactly (E[V 1{X > t-V}] = E_V[V Fbar_X(t-V)]); V is drawn
    from a defensive mixture of its own law and Student-t(3) proposals at the
    integrand's mode (a narrow and a wide one, from where log g drops by 3 and
    12) and at the step t - kink(X). Weights are at most 4, so the estimator
    stays accurate far in the tail.

    Args:
      key: PRNG key.
      error: family of X.
      utility: family of V.
      t: [] finite threshold.
      num_samples: S, total draws (static).
    Returns:
      `MCResult` with [] fields.
    """
    t = as_float(t)
    dtype = t.dtype
    k_scale, k_is = jax.random.split(key)
    log_g = _log_integrand(error, utility, t)
    _, edge, bump = _breaks(error, utility, t)
    narrow, wide = _widths(bump)
    # A robust width of X: half its interquartile range from a few draws.
    xs = jnp.sort(error.sample(k_scale, (512,), dtype))
    sx = jnp.clip(0.5 * (xs[384] - xs[128]), 1e-3, 1e3)
    return _importance(k_is, log_g, utility, jnp.stack([bump.mode, bump.mode, edge]),
                       jnp.clip(jnp.stack([narrow, wide, sx]), 1e-3, 1e6), num_samples, dtype)


def sweep_threshold_mc(key: Array, error: Family, utility: Family, ts: Array, num_samples: int = 30_000) -> MCResult:
    """`threshold_mc` over thresholds [K], one key each (jitted, vmapped)."""
    keys = jax.random.split(key, ts.shape[0])
    return _sweep_mc(keys, error, utility, ts, num_samples)


_sweep_mc = jax.jit(jax.vmap(threshold_mc, in_axes=(0, None, None, 0, None)), static_argnums=4)


# ----------------------------------------------------------------------------
# Boundary case and footnote 4.


def exponential_limit(rate: float | Array, utility: Family) -> Array:
    """lim_t E[V | X + V >= t] for X ~ Exponential(rate): E[V e^{rate V}] / E[e^{rate V}].

    Fbar_X(t - v) = e^{-rate (t - v)} for v < t, so the conditioned law of V
    tends to V's exponential tilt by the rate (finite when E[e^{rate V}] is).
    """
    rate = as_float(rate)
    log_g = lambda v: utility.log_prob(v) + rate * v  # noqa: E731
    c = jnp.asarray(utility.kink(), rate.dtype)
    bump = locate_bump(log_g, jnp.stack([c, c]), rate.dtype)
    return de_moments(log_g, jnp.concatenate([c[None], bump.points()]), utility.support_lower(), rate.dtype).mean


def _footnote4_log_integrand(t):
    """log of f_V(v) P(X >= t - v | V = v) for V ~ N(0,1), X|V ~ N(0,4) if |V|<=1 else X = 0."""
    def log_g(v):
        inner = jnp.abs(v) <= 1.0
        log_phi = -0.5 * v * v - 0.5 * math.log(2 * math.pi)
        log_tail = jnp.where(inner, log_ndtr(-(t - v) / 2.0), jnp.where(v >= t, 0.0, -jnp.inf))
        return log_phi + log_tail
    return log_g


def footnote4(t: Array) -> ThresholdResult:
    """E[V | X + V >= t] for footnote 4's dependent pair, by quadrature.

    V ~ N(0, 1); X | V ~ N(0, 4) (standard deviation 2) when |V| <= 1, else
    X = 0. X is light-tailed given every V and unbiased, yet only |V| <= 1 can
    reach a high proxy, so E[V | X+V >= t] stays bounded as t -> inf (it tends
    to 1, the edge of that window; the paper states 0 — the point, bounded
    rather than infinite as in Theorem 8, stands either way).

    Args:
      t: [] finite threshold.
    """
    t = as_float(t)
    log_g = _footnote4_log_integrand(t)
    one = jnp.ones((), t.dtype)
    bump = locate_bump(log_g, jnp.stack([0.0 * one, jnp.clip(t, -one, one)]), t.dtype)
    breaks = jnp.concatenate([jnp.stack([-one, one, t]), jnp.clip(bump.points(), -one, one)])
    m = de_moments(log_g, breaks, -jnp.inf, t.dtype)
    return ThresholdResult(m.mean, m.log_Z)


def footnote4_mc(key: Array, t: Array, num_samples: int = 30_000) -> MCResult:
    """Importance-sampled Monte Carlo for `footnote4` (X integrated out given V)."""
    t = as_float(t)
    dtype = t.dtype
    log_g = _footnote4_log_integrand(t)
    one = jnp.ones((), dtype)
    mode = jnp.clip(locate_bump(log_g, jnp.stack([0.0 * one, jnp.clip(t, -one, one)]), dtype).mode, -one, one)
    base = parse("normal")
    return _importance(key, log_g, base, jnp.stack([mode, jnp.maximum(t, one)]),
                       jnp.stack([0.25 * one, 0.25 * one]), num_samples, dtype)


# ----------------------------------------------------------------------------


def check_thresholds(ts) -> np.ndarray:
    """Validate thresholds; returns them as a 1-D float array."""
    a = np.atleast_1d(np.asarray(ts, dtype=float))
    if a.ndim != 1 or a.size == 0:
        raise ValueError("thresholds t must be a non-empty 1-D array")
    bad = a[~np.isfinite(a)]
    if bad.size:
        raise ValueError(f"threshold t must be finite, got {bad[0]:g}")
    return a


# ----------------------------------------------------------------------------
# Footnote 4 over a grid of thresholds (the mirror of `sweep_threshold` / `sweep_threshold_mc`).

sweep_footnote4 = jax.jit(jax.vmap(footnote4))
"""Jitted entry point: `sweep_footnote4(ts [K]) -> ThresholdResult` of [K] for footnote 4's dependent pair."""


def sweep_footnote4_mc(key: Array, ts: Array, num_samples: int = 30_000) -> MCResult:
    """`footnote4_mc` over thresholds [K], one key each (jitted, vmapped).

    Args:
      key: PRNG key, split into K.
      ts: [K] finite thresholds.
      num_samples: S, draws per threshold (static).
    Returns:
      `MCResult` of [K].
    """
    return _sweep_footnote4_mc(jax.random.split(key, ts.shape[0]), ts, num_samples)


_sweep_footnote4_mc = jax.jit(jax.vmap(footnote4_mc, in_axes=(0, 0, None)), static_argnums=2)
__all__ += ["sweep_footnote4", "sweep_footnote4_mc"]
