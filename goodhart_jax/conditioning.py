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

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.special import log_ndtr

from goodhart_jax.floats import as_float, check_sweep
from goodhart_jax.importance import snis, stratified_mixture
from goodhart_jax.quadrature import BREAKS_SEARCH, DROPS, Bump, de_moments, locate_bump, log_de_quadrature
from goodhart_jax.tails import Family, parse

__all__ = [
    "ThresholdResult", "MCResult", "log_de_quadrature", "threshold", "sweep_threshold", "threshold_mc",
    "sweep_threshold_mc", "footnote4", "footnote4_mc", "check_thresholds", "exponential_limit",
    "integrand_mode", "weight_tail_index", "MAX_ROUNDING", "MC_MAX_ROUNDING", "MAX_WEIGHT_INDEX", "WHY_NOT",
    "WHY_NOT_MC",
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


def _breaks(error: Family, utility: Family, t: Array, precise: bool = False) -> tuple[Array, Array, Bump]:
    """(breaks [2 + 2 D + 1], the step t - kink(X), the integrand's bump).

    The bump's points to 1e-12 when `precise`, else to what quadrature breaks need (`BREAKS_SEARCH`).
    """
    log_g = _log_integrand(error, utility, t)
    c_v = jnp.asarray(utility.kink(), t.dtype)
    edge = jnp.asarray(t - error.kink(), t.dtype)
    bump = locate_bump(log_g, jnp.stack([c_v, edge]), t.dtype, **({} if precise else BREAKS_SEARCH))
    return jnp.concatenate([jnp.stack([c_v, edge]), bump.points()]), edge, bump


def integrand_mode(error: Family, utility: Family, t: Array) -> Array:
    """The maximiser of f_V(v) Fbar_X(t - v) over v: where the conditioned V lives.

    Args:
      error: the error family X.
      utility: the utility family V.
    """
    return _breaks(error, utility, as_float(t), precise=True)[2].mode


@jax.jit
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
    breaks, _, bump = _breaks(error, utility, t)
    m = de_moments(_log_integrand(error, utility, t), breaks, utility.support_lower(), t.dtype)
    ok = ~(_rounding(error, utility, t, bump.mode) > MAX_ROUNDING)
    return ThresholdResult(jnp.where(ok, m.mean, jnp.nan), jnp.where(ok, m.log_Z, jnp.nan))


sweep_threshold = jax.jit(jax.vmap(threshold, in_axes=(None, None, 0)))
"""Jitted entry point: `sweep_threshold(error, utility, ts [K]) -> ThresholdResult` of [K].

To sweep family parameters too, stack same-named families leaf-wise and vmap
`threshold` over them (they are pytrees).
"""


_PROPOSAL_DF = 3.0


def _student_t(loc: Array, scale: Array) -> Family:
    """A Student-t(3) proposal at `loc` with `scale` (traced)."""
    return Family("student_t", dict(df=jnp.asarray(_PROPOSAL_DF, loc.dtype), loc=loc, scale=scale))


MAX_ROUNDING = 1.0  # nats: the most rounding of log g at the integrand's mode that is integrated
MC_MAX_ROUNDING = 1e-3  # nats, for the Monte Carlo: float32 at t = 1e3 (0.03 nats) gave 497.7 +- 0.03 for 500
MAX_WEIGHT_INDEX = 0.7  # Hill index of the largest importance weights above which the Monte Carlo is refused
WHY_NOT = ("log f_V(v) + log P(X > t - v) is a difference of terms too large for this float to evaluate to "
           f"{MAX_ROUNDING:g} nat at the integrand's mode (float32 reaches t ~ 1e3 for normal error; use float64)")
WHY_NOT_MC = (f"log g rounded by more than {MC_MAX_ROUNDING:g} nats at the mode (this float; the weights' bias "
              f"then passes the standard error), or the largest importance weights have a tail index above "
              f"{MAX_WEIGHT_INDEX:g} (Hill, as in Pareto-smoothed IS): a few draws carry the estimate, whose "
              "standard error cannot be trusted")


def _rounding(error: Family, utility: Family, t: Array, v: Array) -> Array:
    """Nats by which log f_V(v) + log Fbar_X(t - v) is rounded at v: eps (|log f_V| + |log Fbar_X|)."""
    return jnp.finfo(t.dtype).eps * (jnp.abs(utility.log_prob(v)) + jnp.abs(error.log_sf(t - v)))


def weight_tail_index(log_w: Array) -> Array:
    """Hill estimate of the tail index of importance weights from the top M = min(S/5, 3 sqrt(S)) of S.

    An index above 1/2 means an infinite variance of the weights, above 0.7 an
    estimate that a handful of draws decide (Vehtari et al. 2024, Pareto smoothed
    importance sampling, whose tail size M this is). [S] -> [].

    Args:
      log_w: [S] log importance weights.
    """
    S = log_w.shape[0]
    M = max(int(min(S / 5, 3 * math.sqrt(S))), 2)
    top = jax.lax.top_k(jnp.where(jnp.isnan(log_w), -jnp.inf, log_w), M + 1)[0]
    excess = top[:M] - top[M]
    return jnp.where(jnp.isfinite(top[M]), jnp.mean(excess), jnp.nan)


def _importance(key: Array, log_g: Callable, proposals: list, num_samples: int, dtype) -> MCResult:
    """Self-normalised importance sampling of ∫ v g(v) dv / ∫ g(v) dv.

    Proposal: an equal deterministic mixture of the `proposals` families
    (S // C draws each). NaN where the weights' tail index passes MAX_WEIGHT_INDEX.
    """
    draws = stratified_mixture(key, proposals, max(num_samples // len(proposals), 1), dtype)
    lg = log_g(draws.y)
    log_w = jnp.where(jnp.isfinite(lg) & jnp.isfinite(draws.log_q), lg - draws.log_q, -jnp.inf)
    r = snis(log_w, draws.y)
    ok = ~(weight_tail_index(log_w) > MAX_WEIGHT_INDEX)
    return MCResult(jnp.where(ok, r.estimate, jnp.nan), jnp.where(ok, r.se, jnp.nan), r.log_mean_w, r.ess)


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


@functools.partial(jax.jit, static_argnames=("num_samples",))
def threshold_mc(key: Array, error: Family, utility: Family, t: Array, num_samples: int = 30_000) -> MCResult:
    """Importance-sampled Monte Carlo of E[V | X + V >= t] with a standard error.

    X is integrated out exactly (E[V 1{X > t-V}] = E_V[V Fbar_X(t-V)]); V is drawn
    from a defensive mixture of its own law and Student-t(3) proposals at the
    integrand's mode (a narrow and a wide one, from where log g drops by 3 and
    12) and at the step t - kink(X), and a Cauchy one at the step as wide as
    the step is far from the mode: a heavy V past the step (Student-t(1.5) at
    t = 1e4 with Pareto(1.01) error puts E[V | U >= t] ~ 123 there, which the
    others never drew: -0.97 +- 1.2) is then covered. NaN where the integrand
    is rounded by more than MC_MAX_ROUNDING nats in this float, or the weights' tail
    index passes MAX_WEIGHT_INDEX (`WHY_NOT_MC`).

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
    _, edge, bump = _breaks(error, utility, t, precise=True)  # the proposals as before
    narrow, wide = _widths(bump)
    # A robust width of X: half its interquartile range from a few draws.
    xs = jnp.sort(error.sample(k_scale, (512,), dtype))
    sx = jnp.clip(0.5 * (xs[384] - xs[128]), 1e-3, 1e3)
    scales = jnp.clip(jnp.stack([narrow, wide, sx]), 1e-3, 1e6)
    far = jnp.maximum(jnp.abs(edge - bump.mode), sx)
    cauchy = Family("student_t", dict(df=jnp.asarray(1.0, dtype), loc=edge, scale=far))
    proposals = [utility] + [_student_t(c, s) for c, s in zip((bump.mode, bump.mode, edge), scales)] + [cauchy]
    r = _importance(k_is, log_g, proposals, num_samples, dtype)
    ok = ~(_rounding(error, utility, t, bump.mode) > MC_MAX_ROUNDING)
    return r._replace(E_V=jnp.where(ok, r.E_V, jnp.nan), se=jnp.where(ok, r.se, jnp.nan),
                      log_p=jnp.where(ok, r.log_p, jnp.nan))


def sweep_threshold_mc(key: Array, error: Family, utility: Family, ts: Array, num_samples: int = 30_000) -> MCResult:
    """`threshold_mc` over thresholds [K], one key each (jitted, vmapped).

    Args:
      error: the error family X.
      utility: the utility family V.
      ts: [K] thresholds.
      num_samples: importance samples per threshold (static).
    """
    keys = jax.random.split(key, ts.shape[0])
    return _sweep_mc(keys, error, utility, ts, num_samples)


_sweep_mc = jax.jit(jax.vmap(threshold_mc, in_axes=(0, None, None, 0, None)), static_argnums=4)


# ----------------------------------------------------------------------------
# Boundary case and footnote 4.


@jax.jit
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


@jax.jit
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


@functools.partial(jax.jit, static_argnames=("num_samples",))
def footnote4_mc(key: Array, t: Array, num_samples: int = 30_000) -> MCResult:
    """Importance-sampled Monte Carlo for `footnote4` (X integrated out given V)."""
    t = as_float(t)
    dtype = t.dtype
    log_g = _footnote4_log_integrand(t)
    one = jnp.ones((), dtype)
    mode = jnp.clip(locate_bump(log_g, jnp.stack([0.0 * one, jnp.clip(t, -one, one)]), dtype).mode, -one, one)
    base = parse("normal")
    proposals = [base, _student_t(mode, 0.25 * one), _student_t(jnp.maximum(t, one), 0.25 * one)]
    return _importance(key, log_g, proposals, num_samples, dtype)


# ----------------------------------------------------------------------------


def check_thresholds(ts) -> np.ndarray:
    """Validate thresholds; returns them as a 1-D float array.

    Args:
      ts: the thresholds t (a number or a sequence; finite).
    """
    return check_sweep(ts, "threshold t", "thresholds t")


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
