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
tails, which defeat uniform panels (`tilting.log_quadrature` is built for
log-concave tilts; with a Student-t its e^-60 bracket spans +-1e6). So this
module uses a double-exponential rule split at breakpoints — V's kink, the step
t - kink(X) of Fbar_X(t - v), and the located mode — tanh-sinh on finite pieces
and exp-sinh on the infinite ends (`log_de_quadrature`). Graded nodes cluster
geometrically at every breakpoint, so a bump of any width at a breakpoint and
algebraic tails are both integrated to ~1e-10.

Monte Carlo. `threshold_mc` integrates X out exactly (a conditional / Rao-
Blackwellised estimator: E[V 1{X > t - V}] = E_V[V Fbar_X(t - V)]) and
importance-samples V from a defensive mixture of V's own law and Student-t
proposals at the integrand's mode (one narrow, one wide, with widths read off
the located bump) and at the step t - kink(X). The weights are bounded by
4 Fbar_X <= 4, so the self-normalised estimate and its
delta-method standard error stay useful at any t; plain rejection sampling
would keep a fraction P(X+V >= t) of the draws (e^-2500 at t = 100).

Footnote 4: a dependent pair, V ~ N(0, 1) and X | V ~ N(0, 4) when |V| <= 1
else X = 0, for which E[V | X+V >= t] stays bounded although X is light-tailed
given V (`footnote4`).

Glossary: K sweep points (thresholds t), S Monte-Carlo samples.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.special import log_ndtr, logsumexp

from goodhart_jax.tails import Family, parse

__all__ = [
    "ThresholdResult", "MCResult", "log_de_quadrature", "threshold", "sweep_threshold", "threshold_mc",
    "sweep_threshold_mc", "footnote4", "footnote4_mc", "check_thresholds", "exponential_limit",
    "integrand_mode",
]

_H = 1.0 / 12.0  # step of the double-exponential rules
_N = 48  # nodes on each side of the rule's centre: |k h| <= 4
_COARSE = 192  # sinh-spaced points per centre when locating the mode


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
# Graded quadrature in log space.


def _log_cosh(s):
    a = jnp.abs(s)
    return a + jnp.log1p(jnp.exp(-2.0 * a)) - math.log(2.0)


def _de_base(dtype):
    k = jnp.arange(-_N, _N + 1, dtype=dtype) * _H
    s = (jnp.pi / 2) * jnp.sinh(k)
    log_ds = math.log(_H) + jnp.log((jnp.pi / 2) * jnp.cosh(k))  # log(h ds/dk)
    return s, log_ds


def _tanh_sinh(a, b, dtype):
    """Nodes and log-weights on [a, b]; nodes measured from the nearer end (no cancellation)."""
    s, log_ds = _de_base(dtype)
    L = jnp.maximum(b - a, 0.0)
    d = L * jax.nn.sigmoid(-2.0 * jnp.abs(s))  # distance to the nearer end
    y = jnp.where(s < 0, a + d, b - d)
    log_w = jnp.log(L / 2) + log_ds - 2.0 * _log_cosh(s)
    return y, log_w


def _exp_sinh(a, sign, dtype, scale=1.0):
    """Nodes and log-weights on [a, inf) (sign=+1) or (-inf, a] (sign=-1); nodes a + sign scale e^s."""
    s, log_ds = _de_base(dtype)
    y = a + sign * scale * jnp.exp(s)
    return y, log_ds + s + jnp.log(scale)


def log_de_quadrature(breaks: Array, lower: Array, dtype=None, scale: Array = 1.0) -> tuple[Array, Array]:
    """Nodes and log-weights of a double-exponential rule on (lower, inf) split at `breaks`.

    Pieces: [lower, b_1] by tanh-sinh (or (-inf, b_1] by exp-sinh when lower is
    -inf), [b_i, b_{i+1}] by tanh-sinh, [b_m, inf) by exp-sinh. Breaks below
    `lower` are moved to it (their pieces get zero weight). Nodes cluster at
    every break, so features at a break are resolved at any scale, and
    algebraic tails are integrated exactly enough (the exp-sinh nodes reach
    e^43 from the last break).

    Args:
      breaks: [m] split points (any order; traced).
      lower: [] lower end of the support (-inf for the real line).
      scale: [] > 0, the length scale of the tails beyond the outer breaks
        (the exp-sinh nodes are densest within a few `scale` of the break).
    Returns:
      (y, log_w): [(m + 1)(2 _N + 1)] nodes and log-weights; the integral of f
      is approximately sum exp(log_w + log f(y)). Where log_w is -inf the node
      carries no weight (evaluate log f anyway: it must not be NaN there).
    """
    dtype = dtype or jnp.result_type(float)
    breaks = jnp.sort(jnp.asarray(breaks, dtype))
    lower = jnp.asarray(lower, dtype)
    finite_lower = jnp.isfinite(lower)
    b = jnp.where(finite_lower, jnp.maximum(breaks, lower), breaks)
    # Left end.
    y_es, w_es = _exp_sinh(b[0], -1.0, dtype, scale)
    y_ts, w_ts = _tanh_sinh(jnp.where(finite_lower, lower, b[0]), b[0], dtype)
    ys = [jnp.where(finite_lower, y_ts, y_es)]
    ws = [jnp.where(finite_lower, w_ts, w_es)]
    # Finite pieces [b_i, b_{i+1}], all at once.
    y, w = _tanh_sinh(b[:-1, None], b[1:, None], dtype)
    ys.append(y.reshape(-1))
    ws.append(w.reshape(-1))
    y, w = _exp_sinh(b[-1], 1.0, dtype, scale)
    ys.append(y)
    ws.append(w)
    y, w = jnp.concatenate(ys), jnp.concatenate(ws)
    return y, jnp.where(jnp.isnan(w), -jnp.inf, w)


def _integrate(log_g: Callable, breaks: Array, lower: Array, dtype, scale=1.0) -> tuple[Array, Array]:
    """(log ∫ g, ∫ v g / ∫ g) for a log-integrand g on (lower, inf)."""
    y, log_w = log_de_quadrature(breaks, lower, dtype, scale)
    lg = jnp.where(jnp.isfinite(log_w), log_g(y), -jnp.inf)
    lf = jnp.where(jnp.isnan(lg), -jnp.inf, lg) + log_w
    log_Z = logsumexp(lf)
    p = jnp.exp(lf - jnp.where(jnp.isfinite(log_Z), log_Z, 0.0))
    return log_Z, jnp.sum(p * y)


_DROPS = (3.0, 12.0, 40.0)  # log-drops from the peak whose crossings become breaks
_GOLDEN = 60  # golden-section steps locating the peak (shrinks the bracket 1e-12 times)
_BISECT = 56  # bisection steps locating each crossing
_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0


def _argmax_near(log_g: Callable, centres: Array, dtype) -> Array:
    """[2 len(_DROPS) + 1] where a unimodal log_g peaks, and where it crosses peak - _DROPS.

    Returns [l_40, l_12, l_3, mode, r_3, r_12, r_40] (for _DROPS = 3, 12, 40).
    A sinh-spaced grid around each centre finds the peak's grid cell and where
    each drop is crossed; a golden-section search then pins the peak, and
    bisections pin the crossings, all in one `fori_loop` (log_g is compiled
    once more, on [2 len(_DROPS) + 2] points). As quadrature breaks these
    grade the nodes to the bump's width, whatever its distance to the centres.
    """
    C, D = centres.shape[0], len(_DROPS)
    u = jnp.linspace(-12.0, 12.0, _COARSE, dtype=dtype)
    y = centres[:, None] + jnp.sinh(u)  # [C, _COARSE]
    clean = lambda v: jnp.where(jnp.isnan(v), -jnp.inf, v)  # noqa: E731
    lg = clean(log_g(y.reshape(-1))).reshape(C, _COARSE)
    i = jnp.argmax(lg)
    c, j = i // _COARSE, i % _COARSE
    row, yrow = lg[c], y[c]
    peak0 = row[j]
    idx = jnp.arange(_COARSE)
    drops = jnp.asarray(_DROPS, dtype)
    below = row[None, :] < peak0 - drops[:, None]  # [D, _COARSE]
    left = yrow[jnp.max(jnp.where(below & (idx < j), idx, 0), axis=1)]  # [D] outer ends
    right = yrow[jnp.min(jnp.where(below & (idx > j), idx, _COARSE - 1), axis=1)]
    a0, b0 = yrow[jnp.maximum(j - 1, 0)], yrow[jnp.minimum(j + 1, _COARSE - 1)]

    def body(k, st):
        a, b, lo_out, lo_in, hi_in, hi_out, peak, x_peak = st
        gold = k < _GOLDEN
        p, q = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
        mids = jnp.concatenate([(lo_out + lo_in) / 2, (hi_in + hi_out) / 2])
        pts = jnp.where(gold, jnp.concatenate([jnp.stack([p, q]), jnp.zeros_like(mids)]),
                        jnp.concatenate([jnp.stack([x_peak, x_peak]), mids]))
        v = clean(log_g(pts))
        # Golden section: keep the side holding the larger value.
        left_better = v[0] >= v[1]
        a = jnp.where(gold & ~left_better, p, a)
        b = jnp.where(gold & left_better, q, b)
        best = jnp.maximum(v[0], v[1])
        x_peak = jnp.where(gold & (best >= peak), jnp.where(left_better, p, q), x_peak)
        peak = jnp.where(gold, jnp.maximum(peak, best), peak)
        # Bisection of the crossings of peak - drop, started once the peak is pinned.
        lvl = peak - drops
        ml, mr = v[2:2 + D] < lvl, v[2 + D:] < lvl
        bis = ~gold
        lo_out = jnp.where(bis & ml, mids[:D], lo_out)
        lo_in = jnp.where(bis & ~ml, mids[:D], lo_in)
        hi_out = jnp.where(bis & mr, mids[D:], hi_out)
        hi_in = jnp.where(bis & ~mr, mids[D:], hi_in)
        # Entering the bisection phase: inner ends start at the peak.
        start = k == _GOLDEN - 1
        lo_in = jnp.where(start, jnp.full_like(lo_in, x_peak), lo_in)
        hi_in = jnp.where(start, jnp.full_like(hi_in, x_peak), hi_in)
        lo_out = jnp.where(start, jnp.minimum(left, x_peak), lo_out)
        hi_out = jnp.where(start, jnp.maximum(right, x_peak), hi_out)
        return a, b, lo_out, lo_in, hi_in, hi_out, peak, x_peak

    st = (a0, b0, left, left, right, right, peak0, yrow[j])
    _, _, lo_out, lo_in, hi_in, hi_out, peak, x_peak = jax.lax.fori_loop(0, _GOLDEN + _BISECT, body, st)
    out = jnp.concatenate([lo_in[::-1], x_peak[None], hi_in])
    return jnp.where(jnp.isfinite(peak0), out, centres[0])


# ----------------------------------------------------------------------------
# Independent X and V.


def _log_integrand(error: Family, utility: Family, t: Array) -> Callable:
    return lambda v: utility.log_prob(v) + error.log_sf(t - v)


def _breaks(error: Family, utility: Family, t: Array, dtype) -> Array:
    log_g = _log_integrand(error, utility, t)
    c_v = jnp.asarray(utility.kink(), dtype)
    edge = jnp.asarray(t - error.kink(), dtype)
    near = _argmax_near(log_g, jnp.stack([c_v, edge]), dtype)
    return jnp.concatenate([jnp.stack([c_v, edge]), near])


def integrand_mode(error: Family, utility: Family, t: Array) -> Array:
    """The maximiser of f_V(v) Fbar_X(t - v) over v: where the conditioned V lives."""
    t = jnp.asarray(t)
    dtype = t.dtype if jnp.issubdtype(t.dtype, jnp.floating) else jnp.result_type(float)
    return _breaks(error, utility, t.astype(dtype), dtype)[2 + len(_DROPS)]  # c_v, edge, then _argmax_near's


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
    t = jnp.asarray(t)
    dtype = t.dtype if jnp.issubdtype(t.dtype, jnp.floating) else jnp.result_type(float)
    t = t.astype(dtype)
    log_p, E_V = _integrate(_log_integrand(error, utility, t), _breaks(error, utility, t, dtype),
                            utility.support_lower(), dtype)
    return ThresholdResult(E_V, log_p)


sweep_threshold = jax.jit(jax.vmap(threshold, in_axes=(None, None, 0)))
"""Jitted entry point: `sweep_threshold(error, utility, ts [K]) -> ThresholdResult` of [K].

To sweep family parameters too, stack same-named families leaf-wise and vmap
`threshold` over them (they are pytrees).
"""


def _std_t_logpdf(z, df):
    return (jax.scipy.special.gammaln((df + 1) / 2) - jax.scipy.special.gammaln(df / 2)
            - 0.5 * jnp.log(df * jnp.pi) - (df + 1) / 2 * jnp.log1p(z * z / df))


_PROPOSAL_DF = 3.0


def _importance(key: Array, log_g: Callable, base: Family, centres: Array, scales: Array,
                num_samples: int, dtype) -> MCResult:
    """Self-normalised importance sampling of ∫ v g(v) dv / ∫ g(v) dv.

    Proposal: an equal deterministic mixture of `base` and Student-t(3)
    components at `centres` with `scales` (S // (C + 1) draws each).
    """
    C = centres.shape[0]
    m = max(num_samples // (C + 1), 1)
    keys = jax.random.split(key, C + 1)
    draws = [base.sample(keys[0], (m,), dtype)]
    for c in range(C):
        k1, k2 = jax.random.split(keys[c + 1])
        w = jax.random.uniform(k1, (m,), dtype, minval=jnp.finfo(dtype).tiny, maxval=1.0)
        theta = (2.0 * jnp.pi) * jax.random.uniform(k2, (m,), dtype)
        std_t = jnp.sqrt(_PROPOSAL_DF * jnp.expm1(-2.0 / _PROPOSAL_DF * jnp.log(w))) * jnp.cos(theta)
        draws.append(centres[c] + scales[c] * std_t)
    v = jnp.concatenate(draws)
    comps = [base.log_prob(v)] + [
        _std_t_logpdf((v - centres[c]) / scales[c], _PROPOSAL_DF) - jnp.log(scales[c]) for c in range(C)
    ]
    log_q = logsumexp(jnp.stack(comps), axis=0) - jnp.log(C + 1.0)
    lg = log_g(v)
    log_w = jnp.where(jnp.isfinite(lg) & jnp.isfinite(log_q), lg - log_q, -jnp.inf)
    n = v.shape[0]
    log_sum = logsumexp(log_w)
    w = jnp.exp(log_w - log_sum)  # normalised weights
    E = jnp.sum(w * v)
    se = jnp.sqrt(jnp.sum(w * w * (v - E) ** 2))
    ess = 1.0 / jnp.sum(w * w)
    return MCResult(E, se, log_sum - jnp.log(n), ess)


def _widths(near: Array) -> tuple[Array, Array]:
    """Narrow and wide widths of the bump from `_argmax_near`'s level crossings.

    For a Gaussian bump both equal its standard deviation (drops of 3 and 12
    are crossed at +-sqrt(6) and +-sqrt(24) sigma); a polynomial tail makes the
    wide one much wider, which the proposal needs to cover it.
    """
    narrow = (near[4] - near[2]) / (2.0 * math.sqrt(6.0))
    wide = (near[5] - near[1]) / (2.0 * math.sqrt(24.0))
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
    t = jnp.asarray(t)
    dtype = t.dtype if jnp.issubdtype(t.dtype, jnp.floating) else jnp.result_type(float)
    t = t.astype(dtype)
    k_scale, k_is = jax.random.split(key)
    log_g = _log_integrand(error, utility, t)
    br = _breaks(error, utility, t, dtype)
    edge, near = br[1], br[2:]
    narrow, wide = _widths(near)
    # A robust width of X: half its interquartile range from a few draws.
    xs = jnp.sort(error.sample(k_scale, (512,), dtype))
    sx = jnp.clip(0.5 * (xs[384] - xs[128]), 1e-3, 1e3)
    return _importance(k_is, log_g, utility, jnp.stack([near[3], near[3], edge]),
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
    rate = jnp.asarray(rate)
    dtype = rate.dtype if jnp.issubdtype(rate.dtype, jnp.floating) else jnp.result_type(float)
    log_g = lambda v: utility.log_prob(v) + rate * v  # noqa: E731
    c = jnp.asarray(utility.kink(), dtype)
    near = _argmax_near(log_g, jnp.stack([c, c]), dtype)
    _, E = _integrate(log_g, jnp.concatenate([c[None], near]), utility.support_lower(), dtype)
    return E


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
    t = jnp.asarray(t)
    dtype = t.dtype if jnp.issubdtype(t.dtype, jnp.floating) else jnp.result_type(float)
    t = t.astype(dtype)
    log_g = _footnote4_log_integrand(t)
    one = jnp.ones((), dtype)
    near = _argmax_near(log_g, jnp.stack([0.0 * one, jnp.clip(t, -one, one)]), dtype)
    breaks = jnp.concatenate([jnp.stack([-one, one, t]), jnp.clip(near, -one, one)])
    log_p, E_V = _integrate(log_g, breaks, -jnp.inf, dtype)
    return ThresholdResult(E_V, log_p)


def footnote4_mc(key: Array, t: Array, num_samples: int = 30_000) -> MCResult:
    """Importance-sampled Monte Carlo for `footnote4` (X integrated out given V)."""
    t = jnp.asarray(t)
    dtype = t.dtype if jnp.issubdtype(t.dtype, jnp.floating) else jnp.result_type(float)
    t = t.astype(dtype)
    log_g = _footnote4_log_integrand(t)
    one = jnp.ones((), dtype)
    mode = jnp.clip(_argmax_near(log_g, jnp.stack([0.0 * one, jnp.clip(t, -one, one)]), dtype)[3], -one, one)
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
