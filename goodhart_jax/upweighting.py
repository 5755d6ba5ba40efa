"""Distribution-level constructions: Theorem 1 (tail upweighting) and Theorem 3 (KL-bounded optimum).

Theorem 1 (Kwa et al. 2024). For a heavy-tailed Q, P_t rescales Q's mass above
t to total m_t = c / t^p and Q's mass at or below t to 1 - m_t, each part keeping
Q's shape:

    E_{P_t}[X] = (1 - m_t) E_Q[X | X <= t] + m_t E_Q[X | X > t],
    KL(P_t || Q) = (1 - m_t) log((1 - m_t)/F_Q(t)) + m_t log(m_t / Fbar_Q(t)).

With a heavy tail E_Q[X | X > t] grows like t while log Fbar_Q(t) shrinks only
like log t, so (p = 1) the mean tends to >= c while KL -> 0, and (p < 1, the
paper's Figure 3 with p = 0.8) the mean grows without bound while KL -> 0.

Theorem 3. For light-tailed V, the largest E_P[V] with KL(P || Q) <= d is
attained by an exponential tilt P_lam ∝ Q e^{lam V} with KL(P_lam || Q) = d
(lam solved by bisection); it tends to E_Q[V] as d -> 0 and stays finite for
every d. For heavy-tailed V no tilt exists, and the upweighting P_t with its
tail mass chosen so that KL = d has a mean that grows without bound in t:
sup E_P[V] = infinity at every budget (`upweight_at_kl`).

Glossary: K sweep points (thresholds t or budgets d).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from goodhart_jax.floats import as_float
from goodhart_jax.quadrature import de_moments
from goodhart_jax.roots import bisect, bisect_then
from goodhart_jax.tails import Family
from goodhart_jax.tilting import tilt_component

__all__ = ["UpweightResult", "BoundedResult", "TailMoments", "tail_moments", "upweight", "sweep_upweight",
           "upweight_at_kl", "kl_bounded_optimum", "sweep_kl_bounded", "why_no_upweight",
           "why_no_kl_bounded"]


class UpweightResult(NamedTuple):
    """The Theorem 1 distribution P_t; fields [] or [K]."""

    mean: Array  # E_{P_t}[X]
    KL: Array  # KL(P_t || Q)
    tail_mass: Array  # m_t = P_t(X > t)
    log_sf_q: Array  # log Fbar_Q(t) = log Q(X > t)
    exists: Array  # bool: 0 < m_t < 1 and 0 < Fbar_Q(t) < 1

    @property
    def valid(self) -> Array:
        """Old name of `exists`."""
        return self.exists


class BoundedResult(NamedTuple):
    """The KL-bounded optimum; fields [] or [K]."""

    E_V: Array  # max E_P[V] subject to KL(P || Q) <= d
    KL: Array  # KL of the maximiser (= d where the tilt exists)
    lam: Array  # tilt multiplier lam (1/beta)
    exists: Array  # bool: an exponential tilt with this KL exists
    reached: Array  # bool: the tilt found has KL = d (rel. 1e-6); False: E_V, KL are not the optimum at d


class TailMoments(NamedTuple):
    """Q's tail beyond t; fields [] or [K]."""

    log_sf: Array  # log Q(X > t)
    mean: Array  # E_Q[X | X > t]


def tail_moments(base: Family, t: Array) -> TailMoments:
    """log Q(X > t) and E_Q[X | X > t] by log-space quadrature on (t, inf) (unpacks as log_sf, mean).

    Args:
      base: the base family Q.
    """
    t = as_float(t)
    k = jnp.maximum(jnp.asarray(base.kink(), t.dtype), t)
    breaks = jnp.stack([t, k, k + 1.0, 2.0 * jnp.abs(t) + k + 1.0])
    # A heavy tail beyond 2|t| decays on the scale of t itself.
    m = de_moments(base.log_prob, breaks, t, t.dtype, jnp.maximum(1.0, 0.25 * jnp.abs(t)))
    return TailMoments(m.log_Z, m.mean)


def _kl_two_part(m, log_m, log_sf_q):
    """KL of 'mass m above t, 1 - m below' against Q's Fbar_Q(t) = exp(log_sf_q)."""
    log_F_q = jnp.log(-jnp.expm1(log_sf_q))
    one_m = 1.0 - m
    below = jnp.where(one_m > 0, one_m * (jnp.log1p(-m) - log_F_q), 0.0)
    return below + m * (log_m - log_sf_q)


def upweight(base: Family, t: Array, c: Array = 1.0, exponent: Array = 1.0) -> UpweightResult:
    """Theorem 1's P_t for a base law Q: tail mass m_t = c / t^exponent above t.

    Args:
      base: the family of Q (used as given; Theorem 1 assumes mean 0 WLOG).
      t: [] threshold, with 0 < c / t^exponent < 1.
      c: [] > 0.
      exponent: [] p > 0 (p = 1: Theorem 1's c/t; p = 0.8: Figure 3).
    Returns:
      `UpweightResult` with [] fields (mean and KL are +inf where not `exists`).
    """
    t = as_float(t)
    log_m = jnp.log(jnp.asarray(c, t.dtype)) - exponent * jnp.log(jnp.where(t > 0, t, 1.0))
    m = jnp.exp(log_m)
    log_sf, tail_mean = tail_moments(base, t)
    sf = jnp.exp(log_sf)
    mu = jnp.asarray(base.mean, t.dtype)
    below_mean = (mu - sf * tail_mean) / (1.0 - sf)  # E_Q[X | X <= t]
    # m > 0: a tail mass c/t^p below float's smallest (exponent 1e6) is not P_t, it is Q given X <= t.
    exists = (t > 0) & (m > 0) & (m < 1) & (log_sf < 0) & jnp.isfinite(log_sf) & jnp.isfinite(mu)
    mean = (1.0 - m) * below_mean + m * tail_mean
    kl = _kl_two_part(m, log_m, log_sf)
    inf = jnp.asarray(jnp.inf, t.dtype)
    return UpweightResult(jnp.where(exists, mean, inf), jnp.where(exists, kl, inf), m, log_sf, exists)


sweep_upweight = jax.jit(jax.vmap(upweight, in_axes=(None, 0, None, None)))
"""Jitted: `sweep_upweight(base, ts [K], c, exponent) -> UpweightResult` of [K]."""


def why_no_upweight(base: Family, t: float, c: float | None = None, exponent: float | None = None,
                    log_sf_q: float | None = None) -> str | None:
    """Why `upweight(base, t, c, exponent)` (or, c and exponent None, `upweight_at_kl`) has exists = False, or None.

    Float64 limits; log_sf_q = log Q(X > t) when known.
    """
    log10_m = -1.0 if c is None else (math.log(c) - exponent * math.log(t)) / math.log(10.0) if t > 0 else math.inf
    if not math.isfinite(float(base.mean)):
        return f"{base} has no finite mean, so E_P_t[X] = (1 - m) E[X | X <= t] + m E[X | X > t] is not finite"
    if log10_m >= 0:
        return f"the tail mass c/t^p = 10^{log10_m:.4g} is not below 1"
    if log10_m < -307:
        return f"the tail mass c/t^p = 10^{log10_m:.4g} is below float64's smallest number (1e-307)"
    if log_sf_q is not None and not (math.isfinite(log_sf_q) and log_sf_q < 0):
        return f"Q(X > t) = exp({log_sf_q:g}) is 0 or 1 in float64"
    return None

@jax.jit
def upweight_at_kl(base: Family, t: Array, d: Array) -> UpweightResult:
    """P_t with its tail mass m chosen so that KL(P_t || Q) = d (bisection in log m).

    KL is increasing in m on [Fbar_Q(t), 1), from 0; for heavy-tailed Q the
    resulting mean grows without bound in t at every fixed d (Theorem 3's
    heavy-tailed counterpart: no finite KL-bounded optimum).
    """
    t = as_float(t)
    d = jnp.asarray(d, t.dtype)
    log_sf, tail_mean = tail_moments(base, t)
    kl_of = lambda lm: _kl_two_part(jnp.exp(lm), lm, log_sf)  # noqa: E731
    # The end with KL <= d: the budget is never exceeded.
    log_m = bisect(lambda lm: kl_of(lm) - d, log_sf, jnp.zeros_like(log_sf) - 1e-12).neg
    m = jnp.exp(log_m)
    sf = jnp.exp(log_sf)
    mu = jnp.asarray(base.mean, t.dtype)
    mean = (1.0 - m) * (mu - sf * tail_mean) / (1.0 - sf) + m * tail_mean
    exists = jnp.isfinite(log_sf) & (log_sf < 0) & jnp.isfinite(mu)
    return UpweightResult(mean, kl_of(log_m), m, log_sf, exists)


@jax.jit
def kl_bounded_optimum(utility: Family, d: Array, lam_max: float = 1e4) -> BoundedResult:
    """max E_P[V] subject to KL(P || Q) <= d, for V ~ Q light-tailed (Theorem 3).

    The maximiser is the exponential tilt P ∝ Q e^{lam V} whose KL equals d;
    KL(lam) is increasing, so lam is found by bisection in log lam on
    (0, min(mgf_sup, lam_max)), up to 1 - 1e-13 of mgf_sup (Laplace at d = 1e6
    needs lam = 1 - 1.0e-6 + 1.5e-11). Where the tilt at the top of that range still
    has KL < d, `reached` is False (see `why_no_kl_bounded`): every light family
    here has KL -> inf as lam -> mgf_sup, so the optimum at d was not found.

    Args:
      utility: family of V (light-tailed; a heavy one gives exists = False).
      d: [] KL budget > 0.
    Returns:
      `BoundedResult` with [] fields.
    """
    d = as_float(d)
    sup = jnp.minimum(jnp.asarray(utility.mgf_sup, d.dtype), lam_max)
    exists = sup > 0
    # Bisect log lam in [log 1e-8, log sup) (just inside the MGF's domain).
    lo = jnp.full_like(d, jnp.log(1e-8))
    hi = jnp.log(jnp.where(exists, sup, 1.0)) + jnp.log1p(-1e-13 if d.dtype == jnp.float64 else -1e-6)

    def kl_mean(log_lam):
        r = tilt_component(utility, jnp.exp(-log_lam))
        return r.KL - d, (r.KL, r.mean)

    # The end with KL <= d (KL grows with lam); the tilt is traced once, for the bisection and the result.
    b, (kl, mean) = bisect_then(kl_mean, lo, hi)
    lo = b.neg
    inf = jnp.asarray(jnp.inf, d.dtype)
    reached = exists & (jnp.abs(kl - d) <= 1e-6 * d)
    return BoundedResult(jnp.where(exists, mean, inf), jnp.where(exists, kl, inf),
                         jnp.where(exists, jnp.exp(lo), 0.0), exists, reached)


sweep_kl_bounded = jax.jit(jax.vmap(kl_bounded_optimum, in_axes=(None, 0)))
"""Jitted: `sweep_kl_bounded(utility, ds [K]) -> BoundedResult` of [K]."""


def why_no_kl_bounded(utility: Family, d: float, r: BoundedResult) -> str | None:
    """Why the row of `kl_bounded_optimum(utility, d)` (r, [] fields) carries no E_V, or None when it does."""
    if not bool(r.exists):
        return (f"{utility} is heavy-tailed: E[exp(lam V)] = inf for every lam > 0, so no tilt; sup E_P[V] = inf "
                f"at every budget (the upweight_at_kl rows)")
    if not bool(r.reached):
        return (f"the tilt's KL reaches only {float(r.KL):.6g} < d = {d:g} at lam = {float(r.lam):.15g}, the end of "
                f"the computed range (lam < {float(utility.mgf_sup):g} and lam <= 1e4)")
    return None
