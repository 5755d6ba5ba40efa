"""The KL-penalised optimum on a continuous return: P_beta ∝ Q exp(U / beta).

For a base law Q of U = X + V, the maximiser of E_P[U] - beta KL(P || Q) is the
exponential tilt P_beta(du) = Q(du) exp(u / beta) / Z(beta) (Theorem 4 of Kwa et
al. 2024; the Gibbs variational principle). It exists iff
Z(beta) = E_Q[exp(U / beta)] < inf: for every beta when X and V are both
Gaussian, only for beta > scale with Laplace error, and never when either is
heavy-tailed (Corollary 1: E[U] is then unbounded at any KL).

With X and V independent the tilt factorises, P_beta = P_beta^X x P_beta^V, so
E_P[U] = E[X] + E[V] under the tilted factors and KL = KL_X + KL_V. Each factor
is a one-dimensional integral done in log space by `goodhart_jax.quadrature`:
the bump locator finds where the tilted density q(y) e^{y/beta} lives (its
peak and where it has dropped by e^-3, e^-12, e^-40), and a double-exponential
rule split there and at the family's kink integrates it. The tilt moves the bump
out as beta shrinks (to sigma^2/beta for a normal, ~beta^-2 for Weibull(1.5),
and ~1/(1/s - 1/beta) for Laplace(s) near beta = s), so the locator's grid is
scaled to the bump: its mode and its e^-40 crossing are first found by
bisection in log distance from the kink (`tilt_reach`).

Precision: log q(y) + y/beta is a difference of terms of size |m|/beta at the
mode m, rounded by eps |m|/beta nats (float32: 1 nat at m/beta ~ 1e7, a normal
at beta ~ 4e-4; float64 at beta ~ 2e-8). Past 1 nat the integrand's values are
noise: the moments are NaN there (refused; `why_no_tilt` with the dtype says why).
As beta grows the tilt's gain E_P[Y] - E_q[Y] ~ Var/beta and KL ~ Var/(2 beta^2)
are small differences of O(1) integrals; they are integrated directly, as
positive integrands about the mean (`_shifted_moments`), so they keep their
relative precision (~1e-6 in float32, ~1e-14 in float64) until KL leaves the
float's normal range (below tiny/eps: float32 beta ~ 1e15 at unit variance; refused).

`tilt` and `tilt_component` are jitted, `sweep_tilt` is their jitted vmap over beta: an eager call compiles once.

Glossary: K sweep points (betas).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from goodhart_jax.floats import as_float, check_sweep
from goodhart_jax.quadrature import locate_bump, log_de_quadrature, tail_terms
from goodhart_jax.roots import bisect
from goodhart_jax.tails import Family, parse

__all__ = ["TiltResult", "TiltComponent", "tilt", "tilt_component", "tilt_reach", "sweep_tilt", "why_no_tilt",
           "check_betas", "MAX_ROUNDING"]

MAX_ROUNDING = 1.0  # nats: the most rounding of log q(y) + y/beta at the tilt's mode that is integrated
_BISECT = 64  # bisection steps in log distance (the float's whole range to ~1e-16)


class TiltResult(NamedTuple):
    """Moments of the tilted optimum P_beta ∝ Q exp(U/beta); fields [K] or [].

    Where `exists` is False, E_U, E_V, E_X, KL and log_Z hold +inf: the
    normaliser diverges and no maximiser exists (see `why_no_tilt`).
    """

    exists: Array  # bool: E_Q[exp(U/beta)] < inf
    E_U: Array  # E_P[U]
    E_V: Array  # E_P[V]
    E_X: Array  # E_P[X]
    KL: Array  # KL(P_beta || Q)
    log_Z: Array  # log E_Q[exp(U/beta)]


class TiltComponent(NamedTuple):
    """The tilt of one variable, P ∝ q(y) e^{y/beta}; fields [] (+inf where it does not exist)."""

    exists: Array  # bool: E_q[e^{Y/beta}] < inf
    mean: Array  # E_P[Y]
    KL: Array  # KL(P || q)
    log_Z: Array  # log E_q[e^{Y/beta}]


def tilt_reach(fam: Family, beta: Array) -> tuple[Array, Array, Array]:
    """Where the tilt q(y) e^{y/beta} peaks, and how far right of the kink it has fallen by e^-40.

    The tilted density is log-concave for every light-tailed family here, so its
    log-derivative changes sign once right of the kink (the tilt only moves mass
    right): bisection on that sign over y = kink + e^z, z across the float's
    range, finds the mode; a second bisection finds where log f drops 40 below it.

    Args:
      fam: the family of the variable.
      beta: [] > 0.
    Returns:
      (mode [], reach [], rounding []): reach is the distance from the kink to the
      e^-40 crossing right of the mode (NaN where not finite); rounding is
      eps (|log q(mode)| + |mode/beta|), the nats by which log f is rounded there.
    """
    beta = as_float(beta)
    dtype = beta.dtype
    fi = jnp.finfo(dtype)
    log_f = lambda y: fam.log_prob(y) + y / beta  # noqa: E731
    kink = jnp.asarray(fam.kink(), dtype)
    lo, hi = jnp.log(jnp.asarray(fi.tiny, dtype)), jnp.log(jnp.asarray(fi.max, dtype))
    slope = jax.grad(lambda y: log_f(y))
    z_mode = bisect(lambda z: ~(slope(kink + jnp.exp(z)) > 0), lo, hi, _BISECT).pos  # NaN slope: past the peak
    mode = kink + jnp.exp(z_mode)  # kink + tiny (inside the support) where log f falls from the start
    peak = log_f(mode)
    z_drop = bisect(lambda z: ~(log_f(mode + jnp.exp(z)) >= peak - 40.0), lo, hi, _BISECT).pos
    reach = (mode - kink) + jnp.exp(z_drop)
    rounding = fi.eps * (jnp.abs(fam.log_prob(mode)) + jnp.abs(mode / beta))
    return mode, jnp.where(jnp.isfinite(reach) & jnp.isfinite(peak), reach, jnp.nan), rounding


def _heavy_by_name(fam: Family) -> bool:
    """True where the family is heavy-tailed whatever its parameters (Student-t, log-normal, Pareto): known
    while tracing, unlike a heaviness that depends on a traced parameter (Weibull's concentration < 1)."""
    with jax.ensure_compile_time_eval():  # constants stay concrete; traced parameters raise below
        try:
            return bool(jnp.all(fam.heavy))
        except jax.errors.ConcretizationTypeError:
            return False


def _no_tilt(exists: Array, beta: Array, *families: Family, fields: int) -> tuple:
    """(exists, +inf x fields), shaped as the integrals would have been: beta's and the parameters' shape."""
    shape = jnp.broadcast_shapes(jnp.shape(beta), *(jnp.shape(v) for v in jax.tree.leaves(families)))
    return (jnp.broadcast_to(exists, shape),) + (jnp.full(shape, jnp.inf, beta.dtype),) * fields


_EXCESS = tuple(1.0 / math.factorial(k + 2) for k in range(16))  # (e^d - 1 - d)/d^2 = sum_k d^k/(k+2)!


def _moment_factors(d: Array) -> tuple[Array, Array, Array]:
    """Per node, the integrands of `_shifted_moments` over q e^{max(d, 0)} (so nothing overflows), at any d.

    Returns (tilt, gain, excess), each >= 0: e^{d - max(d, 0)}, d (e^d - 1) e^{-max(d, 0)} and
    (e^d - 1 - d) e^{-max(d, 0)}; the last by its series (16 terms: 1e-18) where |d| <= 1/2, elsewhere
    cancelling by no more than ~4 eps.
    """
    e = jnp.expm1(-jnp.abs(d))  # e^{-|d|} - 1, in (-1, 0]
    pos = d > 0
    tilt = jnp.where(pos, 1.0, 1.0 + e)
    gain = jnp.abs(d) * -e
    small = jnp.abs(d) <= 0.5
    ds = jnp.where(small, d, 0.0)
    series = jnp.zeros_like(d)
    for c in reversed(_EXCESS):
        series = series * ds + c
    far = jnp.where(pos, -e - d * (1.0 + e), e - d)  # 1 - (1 + d) e^{-d} for d > 0; e^d - 1 - d for d < 0
    excess = jnp.where(small, ds * ds * series * jnp.where(pos, 1.0 + e, 1.0), far)
    return tilt, gain, excess


class _Shifted(NamedTuple):
    """The tilt measured from c = E_q[Y], d = (Y - c)/beta, where nothing cancels; fields []."""

    gain: Array  # E_P[Y] - c = beta E_P[d]
    KL: Array  # E_P[d] - log Z_c
    log_Zc: Array  # log E_q[e^d] = log(1 + E_q[e^d - 1 - d]) (E_q[d] = 0)


def _shifted_moments(fam: Family, beta: Array, breaks: Array, dtype) -> _Shifted:
    """Gain, KL and log Z of the tilt q e^{y/beta} about the mean c, on a double-exponential rule split at breaks.

    E_P[Y] = c + E_q[(Y - c)(e^d - 1)]/Z_c and Z_c = 1 + E_q[e^d - 1 - d]: both integrands >= 0, so the
    gain and log Z_c = log1p(.) keep their relative precision as beta -> inf (where E_P[Y]/beta - log Z
    is a difference of two ~c/beta terms: float32 printed KL 4.6% off at beta = 1e3, 2x at 1e4). Each
    integrand is summed as q e^{max(d, 0)} times a bounded factor (`_moment_factors`).
    """
    c = jnp.asarray(fam.mean, dtype)
    rule = log_de_quadrature(breaks, fam.support_lower(), dtype)
    y, log_w = rule
    lg = jnp.where(jnp.isfinite(log_w), fam.log_prob(y) + (y - c) / beta, -jnp.inf)
    lg = jnp.where(jnp.isnan(lg), -jnp.inf, lg)
    adjust, tail, _ = tail_terms(rule, lg)
    lf = jnp.concatenate([lg + log_w + adjust, tail.log_w])  # log of q e^d dy at each node
    d = (jnp.concatenate([y, tail.y]) - c) / beta
    top = jnp.max(lf)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    tilt, gain, excess = _moment_factors(d)
    w = jnp.exp(lf - top - jnp.minimum(d, 0.0))  # q e^{max(d, 0)} dy / e^top: at most ~R (Z_c >= 1 = E_q[1])
    sums = lambda f: jnp.sum(jnp.where(jnp.isneginf(lf), 0.0, w * f))  # noqa: E731  (g = 0 at d = -inf; NaN kept)
    S = sums(tilt)  # Z_c / e^top
    E_d = sums(gain) / S  # E_P[d]
    log_Zc = jnp.logaddexp(0.0, top + jnp.log(sums(excess)))  # log1p(E_q[e^d - 1 - d])
    return _Shifted(beta * E_d, E_d - log_Zc, log_Zc)


def _tilt_parts(fam: Family, beta: Array) -> tuple[TiltComponent, Array]:
    """`tilt_component` and its gain E_P[Y] - E_q[Y] (so that E_P[X + V] sums the gains, not two means)."""
    beta = as_float(beta)
    dtype = beta.dtype
    exists = 1.0 / beta < fam.mgf_sup
    inf, nan = jnp.asarray(jnp.inf, dtype), jnp.asarray(jnp.nan, dtype)
    if _heavy_by_name(fam):  # no tilt at any beta (mgf_sup = 0): nothing to integrate, nothing to compile
        no = _no_tilt(exists, beta, fam, fields=3)
        return TiltComponent(*no), no[1]
    log_f = lambda y: fam.log_prob(y) + y / beta  # noqa: E731
    kink = jnp.asarray(fam.kink(), dtype)
    mode, reach, rounding = tilt_reach(fam, beta)
    scale = jnp.where(reach > 0, reach / 1e3, 1.0)  # reach sits mid-grid (the grid spans 8e4 scale)
    bump = locate_bump(log_f, jnp.stack([kink, jnp.where(jnp.isfinite(mode), mode, kink)]), dtype, scale)
    m = _shifted_moments(fam, beta, jnp.concatenate([kink[None], bump.points()]), dtype)
    # KL ~ Var/(2 beta^2) and log Z_c sum terms down to the float's smallest normal number (flushed to 0 below it):
    # trusted to ~R eps relative while they stay above tiny/eps (float32: 1e-31, beta ~ 1e15 at unit variance).
    floor = jnp.finfo(dtype).tiny / jnp.finfo(dtype).eps
    trusted = jnp.isfinite(reach) & (rounding <= MAX_ROUNDING) & (m.log_Zc >= floor) & (m.KL >= floor)
    mask = lambda a: jnp.where(exists, jnp.where(trusted, a, nan), inf)  # noqa: E731
    c = jnp.asarray(fam.mean, dtype)
    comp = TiltComponent(exists, mask(c + m.gain), mask(m.KL), mask(m.log_Zc + c / beta))
    return comp, mask(m.gain)


@jax.jit
def tilt_component(fam: Family, beta: Array) -> TiltComponent:
    """Tilt of one variable: P ∝ q(y) exp(y / beta).

    KL(P || q) = E_P[d] - log E_q[e^d] with d = (Y - E_q[Y])/beta, each
    integral taken in a form with no cancellation (`_shifted_moments`), so
    the moments keep their relative precision at any beta. The tilted density
    is log-concave for every light-tailed family here, so one bump holds its
    mass; the locator's grid is centred on the kink and on the mode and scaled
    to the bump's reach (`tilt_reach`), so it is found at any beta. Where
    log q + y/beta is rounded by more than MAX_ROUNDING nats at the mode, or
    KL or log Z falls below the float's normal range, the moments are NaN
    (refused; `why_no_tilt` says why).

    Args:
      fam: the family of the variable.
      beta: [] > 0.
    Returns:
      `TiltComponent` with [] fields (unpacks as exists, mean, KL, log_Z).
    """
    return _tilt_parts(fam, beta)[0]


@jax.jit
def tilt(error: Family, utility: Family, beta: Array) -> TiltResult:
    """The KL-penalised optimum for U = X + V with X ~ error, V ~ utility independent.

    P_beta ∝ Q exp(U / beta) maximises E_P[U] - beta KL(P || Q) (Theorem 4).

    Args:
      error: family of X.
      utility: family of V.
      beta: [] KL coefficient, > 0.
    Returns:
      `TiltResult` with [] fields.
    """
    if _heavy_by_name(error) or _heavy_by_name(utility):  # no tilt at any beta: the light one is not needed
        beta = as_float(beta)
        return TiltResult(*_no_tilt((1.0 / beta < error.mgf_sup) & (1.0 / beta < utility.mgf_sup), beta,
                                    error, utility, fields=5))
    (ex, mx, kx, zx), gx = _tilt_parts(error, beta)
    (ev, mv, kv, zv), gv = _tilt_parts(utility, beta)
    exists = ex & ev
    dtype = mx.dtype
    inf = jnp.asarray(jnp.inf, dtype)
    mask = lambda a: jnp.where(exists, a, inf)  # noqa: E731
    E_U = (jnp.asarray(error.mean, dtype) + jnp.asarray(utility.mean, dtype)) + (gx + gv)  # the means cancel first
    return TiltResult(exists, mask(E_U), mask(mv), mask(mx), mask(kx + kv), mask(zx + zv))


sweep_tilt = jax.jit(jax.vmap(tilt, in_axes=(None, None, 0)))
"""Jitted entry point: `sweep_tilt(error, utility, betas [K]) -> TiltResult` of [K].

Families are pytrees, so changing the betas or the family parameters does not
retrace; changing a family's name does.
"""


def check_betas(betas) -> np.ndarray:
    """Validate a sweep of KL coefficients; returns them as a 1-D float array.

    Args:
      betas: the KL coefficients (a number or a sequence; finite, > 0).
    """
    return check_sweep(betas, "beta", "betas", "finite and > 0", lambda b: np.isfinite(b) & (b > 0))


def why_no_tilt(error: Family | str, utility: Family | str, beta: float, dtype=None) -> str | None:
    """Why P_beta ∝ Q exp(U/beta) does not exist, or (given the dtype) cannot be computed in it; else None.

    Args:
      error: the error family X (or its spec).
      utility: the utility family V (or its spec).
    """
    beta = float(check_betas(beta)[0])
    for spec in (error, utility):
        fam = parse(spec)
        s = float(fam.mgf_sup)
        if 1.0 / beta < s:
            continue
        if bool(fam.heavy):
            return f"E[exp(U/beta)] diverges: {spec} is heavy-tailed"
        return (f"E[exp(U/beta)] diverges at beta={beta:g}: {spec} has E[exp(sX)] < inf only for "
                f"s < {s:g}, so only beta > {1.0 / s:g} works")
    if dtype is None:
        return None
    for spec in (error, utility):
        fam = parse(spec)
        b = jnp.asarray(beta, dtype)
        mode, reach, rounding = (float(a) for a in _tilt_reach(fam, b))
        name = jnp.dtype(b.dtype).name
        if not math.isfinite(reach):
            return f"{name} cannot locate the tilt of {spec} at beta={beta:g}: it lies beyond the float's range"
        if not rounding <= MAX_ROUNDING:
            return (f"{name} cannot evaluate the tilt of {spec} at beta={beta:g}: log q(y) + y/beta near its mode "
                    f"y ~ {mode:.3g} is a difference of terms ~{abs(mode) / beta:.2g}, rounded by ~{rounding:.2g} "
                    f"nats (> {MAX_ROUNDING:g})" + (": float64 carries it further" if name == "float32" else ""))
        if not math.isfinite(float(_tilt_component(fam, b).KL)):
            fi = jnp.finfo(b.dtype)
            return (f"{name} cannot hold the tilt of {spec} at beta={beta:g}: its KL(P || Q) (~Var/(2 beta^2)) is "
                    f"below {float(fi.tiny / fi.eps):.2g}, where the float's rounding of its terms near its smallest "
                    f"normal number {float(fi.tiny):.2g} is no longer relative"
                    + (": float64 carries it further" if name == "float32" else ""))
    return None


_tilt_reach = jax.jit(tilt_reach)
_tilt_component = jax.jit(tilt_component)
