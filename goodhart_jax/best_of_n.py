"""Best-of-n selection on the proxy U = X + V: exact moments, Monte Carlo, Gao et al.'s fits.

Drawing n independent outcomes and keeping the one with the largest U:

    E[V_best] = ∫ n F_U(u)^{n-1} f_U(u) E[V | U = u] du,
    E[U_best] = ∫ n F_U(u)^{n-1} f_U(u) u du,

with f_U(u) E[V | U = u] = ∫ v f_V(v) f_X(u - v) dv and F_U(u) = 1 - P(U >= u)
(`conditioning.threshold`). One set of outer nodes in u serves every n: the
nodes are graded at u_n, where P(U >= u_n) = 1/n, so each n's integrand is
resolved; with more than 5 values of n, at 5 log-evenly spaced n from the
smallest to the largest (a factor 16 apart for the authors' 4^0..4^8: the
results move by < 2e-13 of their size, and the cost no longer grows with the
number of n). The KL of best-of-n from the base is at most log n - (n-1)/n
(Gao, Schulman & Hilton 2023).

Monte Carlo (`bon_mc`) reproduces the authors' synthetic grid: per trial one
set of n_max draws, and for each n the best of its first n (a valid best-of-n
sample for every n; vmapped over n and trials). `authors_grid()` lists their
families. `fit_gao` (`scaling_laws.fit_gao`, re-exported) fits R(d) = d (alpha - beta d), d = sqrt(KL).
`bon_exact` and `bon_mc` are jitted (ns and trials of `bon_mc` static): an eager call compiles once.

Glossary: K sweep points (values of n), T trials.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from goodhart_jax.conditioning import threshold
from goodhart_jax.quadrature import BREAKS_SEARCH, de_moments, locate_bump, log_de_quadrature, tail_terms
from goodhart_jax.scaling_laws import MIN_FIT_POINTS, GaoFit, fit_gao, too_few_fit_points
from goodhart_jax.tails import Family, parse

__all__ = ["BonResult", "BonMC", "GaoFit", "AuthorsGrid", "kl_bound", "bon_exact", "bon_mc", "why_not_finite",
           "fit_gao", "MIN_FIT_POINTS", "too_few_fit_points", "authors_grid", "check_ns"]

_OUTER_COARSE = 64  # points of the outer grid locating the quantiles u_n
_OUTER_BREAKS = 5  # most quantiles u_n the outer rule is split at
_OUTER_REACH = 3.25  # |k h| of the outer rule's interior pieces where f_U is bounded (`log_de_quadrature`)


class BonResult(NamedTuple):
    """Exact best-of-n moments; fields [K]."""

    E_U: Array  # E[U of the best of n]
    E_V: Array  # E[V of the best of n]
    KL_bound: Array  # log n - (n - 1)/n


class BonMC(NamedTuple):
    """Monte-Carlo best-of-n over trials; fields [K]."""

    E_U: Array  # mean over trials of U of the best of n
    E_V: Array  # mean over trials of V of the best of n
    E_V_se: Array  # standard error of E_V over trials
    E_U_se: Array  # standard error of E_U over trials


def kl_bound(n: Array) -> Array:
    """KL(best-of-n || base) <= log n - (n - 1)/n."""
    n = jnp.asarray(n)
    return jnp.log(n) - (n - 1.0) / n


def _half(a: Family, b: Family, u: Array, dtype):
    """log ∫ f_a(y) f_b(u - y) dy over the y nearer 0 than u - y is (y <= u/2 for u >= 0, y >= u/2
    below), and the mean of y over it (`Moments`).

    There f_b is evaluated at |u - y| >= |u|/2, away from its body, so it is smooth on
    the scale of y wherever that is resolved: a heavy tail of b at u ~ 1e17 is seen as
    f_b(u - y), never as a bump of width 1 at y ~ 1e17 (which float64 rounds to
    multiples of 16). Between a's bump and u/2 geometric breaks resolve a power-law
    tail of a over the decades up to u/2.
    """
    half = u / 2
    up = u >= 0  # the half y <= u/2 (else y >= u/2)
    log_g = lambda y: jnp.where(jnp.where(up, y <= half, y >= half),  # noqa: E731
                                a.log_prob(y) + b.log_prob(u - y), -jnp.inf)
    c = jnp.asarray(a.kink(), dtype)
    edge = jnp.asarray(u - b.kink(), dtype)
    edge = jnp.where(up, jnp.minimum(edge, half), jnp.maximum(edge, half))
    bump = locate_bump(log_g, jnp.stack([c, edge]), dtype, **BREAKS_SEARCH)
    far = jnp.where(up, bump.right[-1], bump.left[-1])
    gap = jnp.where(up, jnp.maximum(half - far, 0.0), jnp.minimum(half - far, 0.0))  # signed
    width = jnp.maximum(jnp.where(up, bump.right[0] - bump.mode, bump.mode - bump.left[0]), jnp.finfo(dtype).tiny)
    span = jnp.log1p(jnp.abs(gap) / width)  # nats of distance from the bump to u/2
    geo = far + gap * jnp.exp(-span * jnp.arange(1, 5, dtype=dtype) / 5)
    breaks = jnp.concatenate([jnp.stack([c, edge, half]), bump.points(), geo])
    return de_moments(log_g, jnp.where(jnp.isnan(breaks), c, breaks), a.support_lower(), dtype)


def _conv(error: Family, utility: Family, u: Array, dtype):
    """(log f_U(u), E[V | U = u]) by the convolution ∫ f_V(v) f_X(u - v) dv.

    Split at v = u/2 (for u >= 0: ∫_{v <= u/2} f_V(v) f_X(u - v) dv + ∫_{x < u/2} f_X(x) f_V(u - x) dx),
    each half integrated over the variable nearer 0 (`_half`), so either family may
    carry the heavy tail, on either side.
    """
    mv, mx = _half(utility, error, u, dtype), _half(error, utility, u, dtype)
    log_f = jnp.logaddexp(mv.log_Z, mx.log_Z)
    wv, wx = jnp.exp(mv.log_Z - log_f), jnp.exp(mx.log_Z - log_f)
    ev = jnp.where(wv > 0, wv * mv.mean, 0.0) + jnp.where(wx > 0, wx * (u - mx.mean), 0.0)
    return log_f, ev


@jax.jit
def bon_exact(error: Family, utility: Family, ns: Array) -> BonResult:
    """Exact E[U] and E[V] of the best of n by quadrature, for every n in `ns`.

    The outer integral's ends are closed by `quadrature.tail_terms` (a power-law
    tail of U beyond the last node, e.g. Pareto(1.01), holds most of E[U]); E[V | U = u]
    there is extrapolated linearly from the last two nodes (slope 1 when V carries
    the tail, 0 when X does). Where the float cannot fit the tail the result is NaN.

    Args:
      error: family of X.
      utility: family of V (independent of X).
      ns: [K] values of n >= 1 (float or int).
    Returns:
      `BonResult` with [K] fields.
    """
    ns = jnp.asarray(ns)
    dtype = jnp.result_type(float)
    ns = ns.astype(dtype)
    centre = jnp.asarray(error.kink() + utility.kink(), dtype)
    lower = jnp.asarray(error.support_lower() + utility.support_lower(), dtype)
    log_sf_u = jax.vmap(lambda u: threshold(error, utility, u).log_p)
    # Locate u_n with log P(U >= u_n) = -log n on a coarse sinh grid (log_sf is decreasing).
    grid = centre + jnp.sinh(jnp.linspace(-9.0, 13.0, _OUTER_COARSE, dtype=dtype))
    grid = jnp.where(jnp.isfinite(lower), jnp.maximum(grid, lower + 1e-6 * (1 + jnp.abs(lower))), grid)
    lsf = log_sf_u(grid)
    # -lsf increasing: interpolate u at -log(sf) = log n (clamped to the grid).
    log_n = jnp.log(ns)
    if ns.shape[0] > _OUTER_BREAKS:  # breaks at log-evenly spaced n, from the smallest n to the largest
        log_n = jnp.linspace(jnp.min(log_n), jnp.max(log_n), _OUTER_BREAKS)
    target = jnp.maximum(log_n, 0.5 * math.log(2.0))
    u_n = jnp.interp(target, -lsf, grid)
    # f_U is bounded when either family's density is (every family on the whole line has one): the pieces
    # between two u_n stop at |k h| = 3.25, nodes within e^-40 of a piece's length of its ends.
    reach = dict(interior_reach=_OUTER_REACH) if (error.real_line or utility.real_line) else {}
    rule = log_de_quadrature(jnp.concatenate([u_n, centre[None]]), lower, dtype, **reach)
    y = rule.y
    lf, ev = jax.vmap(lambda u: _conv(error, utility, u, dtype))(y)
    lsf_y = log_sf_u(y)
    log_F = jnp.log(-jnp.expm1(jnp.minimum(lsf_y, 0.0)))  # log F_U(u)
    ok = jnp.isfinite(rule.log_w) & jnp.isfinite(lf)
    base = jnp.where(ok, lf, -jnp.inf)

    def moments(n):
        lg = base + jnp.log(n) + jnp.where(n > 1, (n - 1.0) * log_F, 0.0)
        lg = jnp.where(jnp.isnan(lg), -jnp.inf, lg)
        adjust, tail, end = tail_terms(rule, lg)
        slope = (ev[end] - ev[end - 1]) / (y[end] - y[end - 1])  # [2] E[V | U] beyond each end, linear
        ev_tail = ev[end] + jnp.where(slope == 0, 0.0, slope * (tail.y - y[end]))
        lw = jnp.concatenate([jnp.where(ok, lg + rule.log_w + adjust, -jnp.inf), tail.log_w])
        top = jnp.max(lw)
        p = jnp.exp(lw - jnp.where(jnp.isfinite(top), top, 0.0))
        total = jnp.sum(p)
        mean = lambda z: jnp.sum(jnp.where(p > 0, p * z, 0.0)) / total  # noqa: E731
        return mean(jnp.concatenate([y, tail.y])), mean(jnp.concatenate([ev, ev_tail]))

    E_U, E_V = jax.vmap(moments)(ns)
    # No finite mean in X or V: E[U of the best] is not finite, and the tail fit beyond the outer rule (U's tail
    # index <= 1) does not hold E[V | U] either (Cauchy X, Student-t(1.5) V, n = 4: 3.26 against 2.39 by MC).
    fin_x, fin_v = jnp.isfinite(jnp.asarray(error.mean, dtype)), jnp.isfinite(jnp.asarray(utility.mean, dtype))
    E_U = jnp.where(fin_x & fin_v, E_U, jnp.inf)
    E_V = jnp.where(fin_v, jnp.where(fin_x, E_V, jnp.nan), jnp.inf)
    return BonResult(E_U, E_V, kl_bound(ns))


_MC_BLOCK = 1 << 18  # draws per variable held at once by `bon_mc` (1 MiB of float32: cache-sized)


def _best_of_prefixes(u: Array, v: Array, cuts: list[int]) -> tuple[Array, Array]:
    """(U, V) of the best (largest u) of the first n draws, for each n in `cuts` (sorted, distinct).

    One pass: the cuts split the last axis into segments [n_(k-1), n_k); each segment's
    best (first index on ties) is found once and the running best keeps the earlier on
    a tie, as `argmax` over the first n_k would. u, v: [..., max(cuts)] -> ([..., K], [..., K]).
    """
    best_u = best_v = None
    out_u, out_v = [], []
    for lo, hi in zip([0] + cuts[:-1], cuts):
        # argmax as a max and a min over indices: two plain reductions, which XLA:CPU vectorises
        # (a fused argmax costs ~4x more beside the sampling on CPU).
        seg = u[..., lo:hi]
        su = jnp.max(seg, axis=-1)
        i = jnp.min(jnp.where(seg == su[..., None], jnp.arange(hi - lo), hi - lo - 1), axis=-1)[..., None]
        sv = jnp.take_along_axis(v[..., lo:hi], i, axis=-1)[..., 0]
        if best_u is None:
            best_u, best_v = su, sv
        else:
            later = su > best_u
            best_u, best_v = jnp.where(later, su, best_u), jnp.where(later, sv, best_v)
        out_u.append(best_u)
        out_v.append(best_v)
    return jnp.stack(out_u, -1), jnp.stack(out_v, -1)


@functools.partial(jax.jit, static_argnames=("ns", "trials", "dtype"))
def bon_mc(key: Array, error: Family, utility: Family, ns: tuple[int, ...], trials: int,
           dtype=jnp.float32) -> BonMC:
    """Monte-Carlo best-of-n: per trial, max(ns) draws; for each n the best of the first n.

    Trial t draws X and V from the two halves of `split(key, trials)[t]`, so its draws do
    not depend on the other trials. Trials run in blocks of about `_MC_BLOCK` draws
    (`lax.map` over blocks, cache-sized), and each trial's draws are read once
    (`_best_of_prefixes`), where a masked argmax per n read them K times.

    Args:
      key: PRNG key.
      error, utility: families of X and V.
      ns: K values of n >= 1, a tuple (static; any order, repeats allowed).
      trials: T >= 2 (static).
    Returns:
      `BonMC` with [K] fields (means and standard errors over trials).
    """
    ns = tuple(int(n) for n in ns)
    cuts = sorted(set(ns))
    n_max = cuts[-1]
    block = max(1, min(trials, _MC_BLOCK // n_max))  # trials per block
    blocks = -(-trials // block)
    keys = jax.random.split(key, trials)
    keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], blocks * block - trials, axis=0)])  # padding, dropped

    def one_block(ks):
        def draw(k):
            kx, kv = jax.random.split(k)
            return error.sample(kx, (n_max,), dtype), utility.sample(kv, (n_max,), dtype)

        x, v = jax.vmap(draw)(ks)  # [block, n_max]
        return _best_of_prefixes(x + v, v, cuts)

    U, V = jax.lax.map(one_block, keys.reshape(blocks, block))  # [blocks, block, len(cuts)]
    where = [cuts.index(n) for n in ns]
    U = U.reshape(-1, len(cuts))[:trials, where]  # [T, K]
    V = V.reshape(-1, len(cuts))[:trials, where]
    se = lambda a: jnp.std(a, axis=0, ddof=1) / math.sqrt(trials)  # noqa: E731
    return BonMC(U.mean(0), V.mean(0), se(V), se(U))


def why_not_finite(error: Family, utility: Family) -> dict[str, str]:
    """Which moments of the best of n are not finite, and why: {`BonMC` field: reason}, empty when all are.

    E_U and E_V name the means (exact or Monte Carlo), E_U_se and E_V_se the
    variances behind a standard error. A sample mean converges only to a finite
    mean, and a standard error means something only where the variance is
    finite. The best of n draws of U = X + V has a finite mean (variance) iff X
    and V have: |U_best| <= sum |U_i|, and a draw far out in X's or V's right
    tail wins, so the best keeps that tail (every family here with an infinite
    moment has it in its right tail). Likewise V of the best has a finite mean
    (variance) iff V has. Host-side: the families' parameters are concrete.

    Args:
      error, utility: families of X and V.
    Returns:
      {field of `BonMC`: why it is not a number to print} for E_U, E_U_se, E_V, E_V_se.
    """
    out = {}
    for fields, fams, what in ((("E_U", "E_U_se"), (error, utility), "U"), (("E_V", "E_V_se"), (utility,), "V")):
        no_mean = [f for f in fams if not math.isfinite(float(f.mean))]
        no_var = [f for f in fams if not math.isfinite(float(f.dist.variance))]
        if no_mean:
            why = (f"E[{what}] of the best of n is not finite ({no_mean[0]} has no finite mean): "
                   f"its sample mean over trials estimates nothing")
            out.update({fields[0]: why, fields[1]: why})
        elif no_var:
            out[fields[1]] = (f"Var[{what}] of the best of n is infinite ({no_var[0]} has infinite "
                              f"variance): a standard error means nothing")
    return out


def _shifted(spec: str, shift: float) -> Family:
    return dataclasses.replace(parse(spec), shift=shift)


class AuthorsGrid(NamedTuple):
    """The authors' synthetic best-of-n families (unpacks as utilities, errors)."""

    utilities: list  # (label, Family) of V
    errors: list  # (label, Family) of X


def authors_grid() -> AuthorsGrid:
    """The authors' synthetic best-of-n families: (utilities, errors), each (label, Family).

    Utility: 2 x N(0, 1), or 2 x Student-t(10) scaled to unit variance. Error:
    N(0, 1); log-normal with log-scale log 2, minus 1; Student-t(3) and
    Student-t(5) scaled to unit variance.
    """
    utilities = [
        ("2*normal", parse("normal:scale=2")),
        ("2*t10/sd", parse(f"student_t:df=10,scale={2 / math.sqrt(10 / 8)!r}")),
    ]
    errors = [
        ("normal", parse("normal")),
        ("lognormal(log2)-1", _shifted(f"lognormal:scale={math.log(2.0)!r}", -1.0)),
        ("t3/sd", parse(f"student_t:df=3,scale={1 / math.sqrt(3.0)!r}")),
        ("t5/sd", parse(f"student_t:df=5,scale={1 / math.sqrt(5 / 3)!r}")),
    ]
    return AuthorsGrid(utilities, errors)


def check_ns(ns) -> tuple[int, ...]:
    """Validate best-of-n sizes: integers >= 1.

    Args:
      ns: the sizes n (a sequence of numbers).
    """
    a = np.atleast_1d(np.asarray(ns, dtype=float))
    if a.ndim != 1 or a.size == 0:
        raise ValueError("n must be a non-empty list of integers >= 1")
    bad = a[~(np.isfinite(a) & (a >= 1) & (a == np.round(a)))]
    if bad.size:
        raise ValueError(f"n must be an integer >= 1, got {bad[0]:g}")
    return tuple(int(x) for x in a)
