"""One-dimensional integrals of exp(log g) in log space: double-exponential rules and a bump locator.

Every integral in the limit studies has the form ∫ exp(log g(y)) dy with g known
only in log space (P(X+V >= t) is e^-2500 at t = 100 with normal error), and
often a normalised mean ∫ y g / ∫ g. The integrands have kinks (a Laplace mode,
a support edge, the step of Fbar_X(t - v)), one or two bumps of any width at
any distance, and algebraic tails, which defeat uniform panels. So:

1. `locate_bump` finds where a unimodal log g peaks and where it has dropped
   by `DROPS` = 3, 12, 40 on each side (a sinh-spaced grid, then a
   golden-section search and bisections); `BREAKS_SEARCH` does it
   with a coarser grid and fewer steps where the points only split a rule.
2. `log_de_quadrature` lays a double-exponential rule split at breakpoints
   (those crossings, kinks, support edges): tanh-sinh on finite pieces,
   exp-sinh on the infinite ends. Nodes cluster geometrically at every break,
   so a bump of any width at a break and an algebraic tail are both integrated
   to ~1e-10 or better (~1e-12 for analytic bumps in float64).
3. `log_moments` / `de_moments` turn a rule into (log ∫ g, ∫ y g / ∫ g).

Used by `conditioning` (E[V | X + V >= t]), `tilting` (the tilt P ∝ Q e^{U/beta}),
`best_of_n` (convolutions and the order-statistic integral) and `upweighting`
(tail moments). A rule built once can integrate several log-integrands on the
same nodes (`best_of_n` does).

Glossary: M breaks, C centres, D drops (len(DROPS)), R nodes of a rule.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from goodhart_jax.roots import bisect

__all__ = ["DROPS", "BREAKS_SEARCH", "Rule", "Moments", "Bump", "log_de_quadrature", "TailTerms", "tail_terms",
           "log_moments", "de_moments", "locate_bump"]

_H = 1.0 / 12.0  # step of the double-exponential rules
_N = 48  # nodes on each side of a rule's centre: |k h| <= 4
_COARSE = 192  # sinh-spaced points per centre when locating a bump
DROPS = (3.0, 12.0, 40.0)  # log-drops from a bump's peak whose crossings `locate_bump` returns
_GOLDEN = 60  # golden-section steps locating the peak (shrink the bracket 1e-12 times)
_BISECT = 56  # bisection steps locating each crossing
_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0
BREAKS_SEARCH = dict(grid=64, steps=(40, 32))
"""`locate_bump` settings for a bump whose points only serve as a rule's breaks: a 64-point grid, 40
golden-section and 32 bisection steps (the mode to ~1e-8 of a grid cell, the crossings to ~2e-10 of their
brackets). A double-exponential rule's accuracy does not hang on where exactly its breaks fall, only on the
integrand being smooth between them; the default (192 points, 60 and 56 steps) pins the points to ~1e-12
and costs ~2.1x the evaluations (840 against 400 for two centres)."""


class Rule(NamedTuple):
    """Nodes and log-weights: ∫ f ≈ sum exp(log_w + log f(y)). Fields [R]."""

    y: Array  # nodes
    log_w: Array  # log-weights; -inf where a node carries no weight


class Moments(NamedTuple):
    """log ∫ g and the normalised mean ∫ y g / ∫ g; fields []."""

    log_Z: Array  # log ∫ g
    mean: Array  # ∫ y g(y) dy / ∫ g(y) dy


class Bump(NamedTuple):
    """Where a unimodal log g peaks and where it crosses peak - DROPS[i] on each side."""

    mode: Array  # [] the maximiser
    left: Array  # [D] crossings below the mode, left[i] for DROPS[i] (so decreasing)
    right: Array  # [D] crossings above the mode, right[i] for DROPS[i] (so increasing)

    def points(self) -> Array:
        """[2 D + 1] all of them in increasing order: left reversed, mode, right."""
        return jnp.concatenate([self.left[::-1], self.mode[None], self.right])


# ----------------------------------------------------------------------------
# Double-exponential rules.


def _log_cosh(s):
    a = jnp.abs(s)
    return a + jnp.log1p(jnp.exp(-2.0 * a)) - math.log(2.0)


def _de_base(dtype, n: int = _N):
    k = jnp.arange(-n, n + 1, dtype=dtype) * _H
    s = (jnp.pi / 2) * jnp.sinh(k)
    log_ds = math.log(_H) + jnp.log((jnp.pi / 2) * jnp.cosh(k))  # log(h ds/dk)
    return s, log_ds


def _tanh_sinh(a, b, dtype, n: int = _N):
    """Nodes and log-weights on [a, b] (k = -n .. n); nodes measured from the nearer end (no cancellation)."""
    s, log_ds = _de_base(dtype, n)
    L = jnp.maximum(b - a, 0.0)
    d = L * jax.nn.sigmoid(-2.0 * jnp.abs(s))  # distance to the nearer end
    y = jnp.where(s < 0, a + d, b - d)
    log_w = jnp.log(L / 2) + log_ds - 2.0 * _log_cosh(s)
    return y, log_w


def _exp_sinh(a, sign, dtype, scale=1.0):
    """Nodes and log-weights on [a, inf) (sign=+1) or (-inf, a] (sign=-1); nodes a + sign scale e^s.

    The outermost node is a + sign scale e^{42.9}; `tail_terms` closes the rule there.
    """
    s, log_ds = _de_base(dtype)
    y = a + sign * scale * jnp.exp(s)
    return y, log_ds + s + jnp.log(scale)


def log_de_quadrature(breaks: Array, lower: Array, dtype=None, scale: Array = 1.0,
                      interior_reach: float = _N * _H) -> Rule:
    """A double-exponential rule on (lower, inf) split at `breaks`, in log space.

    Pieces: [lower, b_1] by tanh-sinh (or (-inf, b_1] by exp-sinh when lower is
    -inf), [b_i, b_{i+1}] by tanh-sinh, [b_m, inf) by exp-sinh. Breaks below
    `lower` are moved to it (their pieces get zero weight). Nodes cluster at
    every break, so features at a break are resolved at any scale, and
    algebraic tails are integrated exactly enough (the exp-sinh nodes reach
    e^43 from the last break).

    Args:
      breaks: [M] split points (any order; traced).
      lower: [] lower end of the support (-inf for the real line).
      dtype: float dtype of the nodes (default: JAX's default float).
      scale: [] > 0, the length scale of the tails beyond the outer breaks
        (the exp-sinh nodes are densest within a few `scale` of the break).
      interior_reach: static |k h| of the outermost nodes of the pieces between two breaks (default 4,
        those nodes ~e^-85 of a piece's length from its ends, for an integrable singularity there).
        3.5 (~e^-52; 2 x 6 fewer nodes a piece) is enough where the integrand is bounded at the breaks.
        The end pieces keep reach 4 (`tail_terms` reads them).
    Returns:
      `Rule` with [(M + 1)(2 _N + 1)] fields (fewer with a shorter `interior_reach`). Where log_w is -inf the node
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
    y, w = _tanh_sinh(b[:-1, None], b[1:, None], dtype, round(interior_reach / _H))
    ys.append(y.reshape(-1))
    ws.append(w.reshape(-1))
    y, w = _exp_sinh(b[-1], 1.0, dtype, scale)
    ys.append(y)
    ws.append(w)
    y, w = jnp.concatenate(ys), jnp.concatenate(ws)
    return Rule(y, jnp.where(jnp.isnan(w), -jnp.inf, w))


def _power_tail(y1, y0, lg1, lg0):
    """∫ beyond the outermost node y1 of g ~ c |y|^p, p fitted through (y0, lg0) and (y1, lg1).

    ∫_{|y| > |y1|} g = g(y1) |y1| / (-p - 1) and its mean y1 (p + 1) / (p + 2) (±inf when
    p >= -2: the tail has no mean). Zero weight where the fit is not a decaying power
    law (-inf or NaN values, p >= -1, or nodes too close to tell).
    """
    a1, a0 = jnp.abs(y1), jnp.abs(y0)
    ok = (jnp.sign(y1) == jnp.sign(y0)) & (a0 > 0) & (a1 > 1.2 * a0) & jnp.isfinite(lg1) & jnp.isfinite(lg0)
    d = jnp.log(jnp.where(ok, a1, 2.0)) - jnp.log(jnp.where(ok, a0, 1.0))
    p = jnp.where(ok, (lg1 - lg0) / d, -jnp.inf)
    ok = ok & (p < -1.0)
    q = jnp.where(ok, p, -3.0)
    # Rounding of lg in this float moves p by dp; the tail's weight and mean are off by
    # dp/(-p-1) and dp/(-p-2) relatively: NaN (refused) where that passes 1e-4.
    dp = 4.0 * jnp.finfo(y1.dtype).eps * (jnp.abs(lg1) + jnp.abs(lg0) + 1.0) / d
    log_W = jnp.where(ok, lg1 + jnp.log(a1) - jnp.log(-q - 1.0), -jnp.inf)
    log_W = jnp.where(ok & (dp > 1e-4 * (-q - 1.0)), jnp.nan, log_W)
    ybar = jnp.where(q < -2.0, y1 * ((q + 1.0) / (q + 2.0)), jnp.sign(y1) * jnp.inf)
    ybar = jnp.where((q < -2.0) & (dp > 1e-4 * (-q - 2.0)), jnp.nan, ybar)
    return log_W, jnp.where(ok, ybar, y1)


# Euler-Maclaurin end weights for the three outermost finite exp-sinh nodes (k = j-2,
# j-1, j): the sum then integrates up to node j only, to O(h^4), whatever the
# integrand still weighs there (half the end node, minus h^2/12 f' by a 3-point
# difference). Beyond node j `tail_terms` adds the power-law tail in closed form.
_END = (1.0 - 1.0 / 24.0, 1.0 + 4.0 / 24.0, 1.0 - 0.5 - 3.0 / 24.0)


class TailTerms(NamedTuple):
    """How `tail_terms` closes a rule: log-weight corrections and the tails beyond it."""

    adjust: Array  # [R] added to the rule's log-weights (Euler-Maclaurin ends)
    tail: Rule  # [2] pseudo-nodes (right, left): y the tail's mean, log_w log ∫ g over it
    end: Array  # [2] int: index in the rule of the outermost node each tail starts at


def _close_end(y, log_w, lg, idx):
    """Close one exp-sinh end whose nodes, outwards, are y[idx] ([n]): (adjust [n], log_W, ybar, end)."""
    yb, wb, gb = y[idx], log_w[idx], lg[idx]
    # A prefix: nodes overflow only at the far end; 2^-16 of the float's range leaves
    # room for the tail's mean (up to ~1e4 |y_j| at tail index 1.0001) not to overflow.
    big = jnp.finfo(y.dtype).max * 2.0 ** -16
    fin = (jnp.abs(yb) < big) & jnp.isfinite(wb)
    j = jnp.sum(fin) - 1  # outermost finite node
    factors = jnp.log(jnp.asarray(_END, y.dtype))
    adjust = jnp.zeros_like(yb)
    for o in range(3):  # nodes j-2, j-1, j
        adjust = adjust.at[jnp.maximum(j - 2 + o, 0)].add(jnp.where(j >= 2, factors[o], 0.0))
    jj = jnp.maximum(j, 1)
    log_W, ybar = _power_tail(yb[jj], yb[jj - 1], gb[jj], gb[jj - 1])
    return adjust, jnp.where(j >= 2, log_W, -jnp.inf), ybar, idx[jj]


def tail_terms(rule: Rule, lg: Array) -> TailTerms:
    """Closes a `log_de_quadrature` rule's infinite ends: end weights and power-law tails.

    The exp-sinh ends stop at scale e^{42.9} from the outer break (sooner where the
    nodes overflow the float), where a tail g ~ y^-(1 + alpha) with alpha near 1
    still holds much of ∫ g (35% at alpha = 1.01) and most of ∫ y g. So the sum
    stops at the outermost finite node y_j with Euler-Maclaurin end weights, and
    beyond it g ~ c |y|^p, fitted through the last two nodes, is integrated in
    closed form: g(y_j) |y_j| / (-p - 1), at mean y_j (p + 1)/(p + 2). Exact for
    Pareto tails, to O(y_j^-2) for Student-t ones, negligible for light tails.

    Args:
      rule: `Rule` of [R] from `log_de_quadrature` (right end last; a left exp-sinh
        end, when the support is unbounded below, first).
      lg: [R] log g at the rule's nodes (-inf for g = 0; NaN counts as -inf).
    Returns:
      `TailTerms`: add `adjust` to log_w, and the two `tail` pseudo-nodes to the sums
      (their y is ±inf where the tail has no mean: guard 0 * inf; NaN where this
      float cannot fit the tail to 1e-4: the result is refused), and where they start.
    """
    y, log_w = rule
    lg = jnp.where(jnp.isnan(lg), -jnp.inf, lg)
    n, R = 2 * _N + 1, y.shape[0]
    right = jnp.arange(R - n, R)
    left = jnp.arange(n)  # outwards when it is an exp-sinh end: k = -N .. N
    adj_r, lw_r, y_r, end_r = _close_end(y, log_w, lg, right)
    adj_l, lw_l, y_l, end_l = _close_end(y, log_w, lg, left)
    left_is_infinite = y[n - 1] < y[n - 2]  # exp-sinh nodes run outwards; tanh-sinh ones inwards
    adjust = jnp.zeros_like(y).at[right].add(adj_r)
    adjust = adjust.at[left].add(jnp.where(left_is_infinite, adj_l, 0.0))
    lw_l = jnp.where(left_is_infinite, lw_l, -jnp.inf)
    return TailTerms(adjust, Rule(jnp.stack([y_r, y_l]), jnp.stack([lw_r, lw_l])), jnp.stack([end_r, end_l]))


def log_moments(log_g: Callable[[Array], Array], rule: Rule) -> Moments:
    """(log ∫ g, ∫ y g / ∫ g) on a rule, with `tail_terms`; NaN values of log_g count as -inf (g = 0).

    Args:
      log_g: vectorised [R] -> [R], the log-integrand.
      rule: `Rule` of [R] from `log_de_quadrature`.
    """
    y, log_w = rule
    lg = jnp.where(jnp.isfinite(log_w), log_g(y), -jnp.inf)
    lg = jnp.where(jnp.isnan(lg), -jnp.inf, lg)
    adjust, tail, _ = tail_terms(rule, lg)
    lf = jnp.concatenate([lg + log_w + adjust, tail.log_w])
    y = jnp.concatenate([y, tail.y])
    top = jnp.max(lf)
    p = jnp.exp(lf - jnp.where(jnp.isfinite(top), top, 0.0))
    total = jnp.sum(p)
    # The mean divides by sum p, not by exp(log Z): log Z far from 0 (e^-2500) is
    # rounded to the float's resolution at its magnitude, 2e-4 in float32.
    return Moments(top + jnp.log(total), jnp.sum(jnp.where(p > 0, p * y, 0.0)) / total)


def de_moments(log_g: Callable[[Array], Array], breaks: Array, lower: Array, dtype=None,
               scale: Array = 1.0) -> Moments:
    """`log_moments` of log_g on `log_de_quadrature(breaks, lower, dtype, scale)`."""
    return log_moments(log_g, log_de_quadrature(breaks, lower, dtype, scale))


# ----------------------------------------------------------------------------
# Locating a bump.


def locate_bump(log_g: Callable[[Array], Array], centres: Array, dtype=None, scale: Array = 1.0,
                grid: int = _COARSE, steps: tuple[int, int] = (_GOLDEN, _BISECT)) -> Bump:
    """Where a unimodal log_g peaks, and where it crosses peak - DROPS on each side.

    A sinh-spaced grid around each centre (|y - centre| from 0.06 (default grid) to sinh(12) ~ 8e4
    times `scale`) finds the peak's grid cell and where each drop is crossed; a golden-section
    search then pins the peak (a `fori_loop` on 2 points a step) and bisections pin
    the crossings (a second one, on [2 D] points a step). As
    quadrature breaks these grade the nodes to the bump's width, whatever its
    distance to the centres. Where log_g is -inf on the whole grid every point
    is centres[0]. Where the grid's best point is its outermost one (the peak lies
    beyond the grid's reach, 8e4 `scale`) every point is NaN: not found, refused.

    Args:
      log_g: vectorised [n] -> [n] (NaN counts as -inf).
      centres: [C] points to centre the search grid on (the best one wins).
      dtype: float dtype of the search.
      scale: [] or [C] > 0, the grid's length scale around each centre.
      grid: points of the sinh-spaced grid per centre (static; the peak's cell is found from any grid, a
        unimodal log_g peaking between the neighbours of its best grid point).
      steps: (golden-section, bisection) steps (static); the default pins the mode to 1e-12 of its grid
        cell; `BREAKS_SEARCH` is enough for quadrature breaks.
    Returns:
      `Bump`: mode [], left [D], right [D].
    """
    dtype = dtype or jnp.result_type(float)
    centres = jnp.asarray(centres, dtype)
    C, D = centres.shape[0], len(DROPS)
    u = jnp.linspace(-12.0, 12.0, grid, dtype=dtype)
    scale = jnp.broadcast_to(jnp.asarray(scale, dtype), centres.shape)
    y = centres[:, None] + scale[:, None] * jnp.sinh(u)  # [C, grid]
    clean = lambda v: jnp.where(jnp.isnan(v), -jnp.inf, v)  # noqa: E731
    lg = clean(log_g(y.reshape(-1))).reshape(C, grid)
    i = jnp.argmax(lg)
    c, j = i // grid, i % grid
    row, yrow = lg[c], y[c]
    peak0 = row[j]
    idx = jnp.arange(grid)
    drops = jnp.asarray(DROPS, dtype)
    below = row[None, :] < peak0 - drops[:, None]  # [D, grid]
    left = yrow[jnp.max(jnp.where(below & (idx < j), idx, 0), axis=1)]  # [D] outer ends
    right = yrow[jnp.min(jnp.where(below & (idx > j), idx, grid - 1), axis=1)]
    a0, b0 = yrow[jnp.maximum(j - 1, 0)], yrow[jnp.minimum(j + 1, grid - 1)]

    def golden(k, st):
        a, b, peak, x_peak = st
        p, q = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
        v = clean(log_g(jnp.stack([p, q])))
        # Keep the side holding the larger value.
        left_better = v[0] >= v[1]
        best = jnp.maximum(v[0], v[1])
        x_peak = jnp.where(best >= peak, jnp.where(left_better, p, q), x_peak)
        return (jnp.where(left_better, a, p), jnp.where(left_better, q, b), jnp.maximum(peak, best), x_peak)

    _, _, peak, x_peak = jax.lax.fori_loop(0, steps[0], golden, (a0, b0, peak0, yrow[j]))
    lvl = peak - drops

    # The crossings of peak - drop, left and right together: outer ends below the level, inner ends at or above.
    inner = jnp.full_like(left, x_peak)
    cross = bisect(lambda x: clean(log_g(x)) < jnp.concatenate([lvl, lvl]), jnp.concatenate([inner, inner]),
                   jnp.concatenate([jnp.minimum(left, x_peak), jnp.maximum(right, x_peak)]), steps[1])
    lo_in, hi_in = cross.neg[:D], cross.neg[D:]
    found = jnp.isfinite(peak0)
    beyond = found & ((j == 0) | (j == grid - 1))  # still rising at the grid's edge
    at = lambda a: jnp.where(beyond, jnp.nan, jnp.where(found, a, centres[0]))  # noqa: E731
    return Bump(at(x_peak), at(lo_in), at(hi_in))
