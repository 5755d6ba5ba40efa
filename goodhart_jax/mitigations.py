"""Variants of KL-regularised optimisation and proposed fixes (paper Section 6.1; the post's mitigations).

(a) A KL target instead of a fixed beta: beta is solved per target (bisection
    in log beta, KL(beta) is decreasing), as adaptive-KL RLHF does (Section
    6.1's second bullet; Ziegler et al. 2019).
(b) Section 6.1's bounded objective: maximise sigmoid(E_P[U]) - beta KL(P || Q)
    (the sigmoid of the *expected* proxy; trajectory KL on a tree). The paper
    prints "sigma(E[U]) + D_KL(Tr(pi) || Tr(pi0))"; as a regulariser the KL is
    subtracted. The objective is not linear in P, so its optimum is not a Gibbs
    tilt of a fixed reward, but it is still an exponential tilt P_lam ∝ Q e^{lam U}:
    among the laws with E_P[U] = m the tilt with that mean has the least KL
    (Gibbs' inequality), so only lam remains. With m(lam) = E_lam[U] and
    dKL/dlam = lam m'(lam),

        d/dlam [sigmoid(m) - beta KL] = m'(lam) (sigmoid'(m) - beta lam),

    so the optimum has lam = sigmoid'(E_P[U]) / beta <= 1 / (4 beta): the tilt
    can never be strong, and the paper's point follows, near-optimal policies
    keep KL and E[V] small (`sigmoid_of_mean_tree`, `sigmoid_of_mean_tilt`).
(c) The post's bounded reward ("Goodhart seems preventable": make the reward a
    bounded function): maximise E_P[sigmoid(U)] - beta KL, a Gibbs tilt
    P ∝ Q exp(sigmoid(U)/beta) that always exists (`sigmoid_proxy_tree`,
    `sigmoid_proxy_tilt_mc`).
(d) A capped odds ratio pi(a|s)/pi0(a|s) <= 1/q instead of KL (a quantilizer,
    the post's other mitigation): on the continuous model this is
    conditioning on the top q of U, so E[V] = E[V | U >= t_q] with
    P(U >= t_q) = q and KL = log(1/q).

On the token tree (`goodhart_jax.mdp`) all are exact. On the continuous model
(a) and (b) use `tilting.tilt` (no optimum for heavy error), (d) uses
`conditioning.threshold`, and (c) is estimated by self-normalised weighting of
draws from Q (weights are at most e^{1/beta}). The solvers and the Monte
Carlo are jitted (`num_samples` static): an eager call compiles once.

Glossary: K sweep points (budgets), A actions, L depth, J grid points in lam.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from goodhart_jax import mdp
from goodhart_jax.conditioning import threshold
from goodhart_jax.floats import as_float
from goodhart_jax.importance import snis
from goodhart_jax.roots import bisect_then
from goodhart_jax.tails import Family
from goodhart_jax.tilting import tilt

__all__ = ["Budgeted", "BudgetedMC", "SigmoidOfMean", "kl_target_tree", "sigmoid_proxy_tree", "quantilizer_policy",
           "quantilizer_tree", "quantilizer_tree_kl", "spends", "kl_target_tilt", "quantilizer_continuous",
           "sigmoid_proxy_tilt_mc",
           "sigmoid_of_mean_tree", "sigmoid_of_mean_tilt", "bounded_tree", "bounded_tilt_mc", "MIN_ESS",
           "WHY_NOT", "NOT_FINITE", "why_not_finite"]

_LOG_BETA = (math.log(1e-3), math.log(1e4))


class Budgeted(NamedTuple):
    """An optimum at a given budget; fields []."""

    E_U: Array  # E_P[U] (E_P[sigmoid(U)] for the bounded proxy)
    E_V: Array  # E_P[V]
    KL: Array  # KL(P || Q) (trajectory KL on a tree)
    param: Array  # the knob that met the budget: beta, or the threshold t_q
    exists: Array  # bool


class BudgetedMC(NamedTuple):
    """`Budgeted` estimated by Monte Carlo, with its standard error; fields []."""

    E_U: Array  # estimate of E_P[sigmoid(U)]
    E_V: Array  # estimate of E_P[V]
    KL: Array  # estimate of KL(P || Q)
    param: Array  # beta
    exists: Array  # bool
    E_V_se: Array  # delta-method standard error of E_V
    ess: Array  # effective sample size of the weights


class SigmoidOfMean(NamedTuple):
    """The maximiser of sigmoid(E_P[U]) - beta KL(P || Q) (Section 6.1); fields []."""

    objective: Array  # sigmoid(E_U) - beta KL, its maximum (the supremum where not `exists`)
    E_U: Array  # E_P[U]
    E_V: Array  # E_P[V]
    KL: Array  # KL(P || Q) (trajectory KL on a tree)
    lam: Array  # the tilt P ∝ Q exp(lam U); lam = sigmoid'(E_U) / beta
    exists: Array  # bool: the supremum is attained


# ----------------------------------------------------------------------------
# Token tree.


@jax.jit
def kl_target_tree(tree: mdp.Tree, target: Array) -> Budgeted:
    """The KL-penalised optimum whose trajectory KL equals `target` (beta solved)."""
    target = jnp.asarray(target, tree.X[-1].dtype)

    def kl(lb):  # decreasing in log beta
        r = mdp.soft_optimum(tree, jnp.exp(lb))
        return r.KL - target, r

    b, r = bisect_then(kl, jnp.full_like(target, _LOG_BETA[1]), jnp.full_like(target, _LOG_BETA[0]))  # KL <= target
    return Budgeted(r.E_U, r.E_V, r.KL, jnp.exp(b.neg), spends(r.KL, target))


def spends(kl: Array, target: Array) -> Array:
    """Whether a solved KL meets its budget: never over it, and within sqrt(eps) of it (relative).

    The bisection in log beta reaches ~1e-7 relative in float32 and ~1e-14 in
    float64 where the KL is computed that well; sqrt(eps) (3.5e-4 float32, 1.5e-8
    float64) leaves room for the KL's own rounding and refuses what is off by more:
    an end of the beta range that overspends (Laplace at a budget of 1e-8 spent
    1.5e-8) or a float32 tree KL of 1e-8 that came out negative.

    Args:
      kl: the KL the solved beta spends.
      target: the KL budget.
    """
    rtol = jnp.sqrt(jnp.finfo(jnp.result_type(kl)).eps)
    return (kl <= target) & (target - kl <= rtol * target)


def sigmoid_proxy_tree(tree: mdp.Tree) -> mdp.Tree:
    """The same tree with proxy sigmoid(U): X' = sigmoid(X + V) - V, so X' + V = sigmoid(U).

    `mdp.soft_optimum(sigmoid_proxy_tree(tree), beta)` maximises
    E[sigmoid(U)] - beta KL, the post's bounded reward (not Section 6.1's
    sigmoid(E[U]) - beta KL: see `sigmoid_of_mean_tree`).
    """
    X = tuple(jax.nn.sigmoid(x + v) - v for x, v in zip(tree.X, tree.V))
    return mdp.Tree(tree.log_pi0, X, tree.V)


@jax.jit
def quantilizer_policy(tree: mdp.Tree, q: Array) -> mdp.Policy:
    """Maximise E[U] subject to pi(a|s) <= pi0(a|s)/q at every state (backward induction).

    At a state with action values W(s a), the best capped policy fills the
    actions in decreasing W, each up to pi0(a|s)/q, until the mass is 1.

    Args:
      q: [] in (0, 1]; q = 1 gives pi0.
    Returns:
      `mdp.Policy`: pi, L arrays [n^k, A] of policy probabilities; value, E_pi[U].
    """
    spec = mdp.spec_of(tree)
    U = mdp.terminal_values(tree)
    W = U[-1]
    pi = [None] * spec.depth
    for k in reversed(range(spec.depth)):
        vals = mdp.action_values(spec, W, U[k])  # [n^k, A]
        cap = jnp.exp(tree.log_pi0[k]) / q
        order = jnp.argsort(-vals, axis=1)
        cap_s = jnp.take_along_axis(cap, order, axis=1)
        before = jnp.cumsum(cap_s, axis=1) - cap_s
        p_s = jnp.clip(1.0 - before, 0.0, cap_s)
        p = jnp.zeros_like(p_s).at[jnp.arange(p_s.shape[0])[:, None], order].set(p_s)
        pi[k] = p
        W = jnp.sum(p * vals, axis=1)
    return mdp.Policy(tuple(pi), W[0])


@jax.jit
def quantilizer_tree(tree: mdp.Tree, q: Array) -> Budgeted:
    """`quantilizer_policy`'s expectations; param = q."""
    r = mdp.trajectory_stats(tree, quantilizer_policy(tree, q).pi)
    return Budgeted(r.E_U, r.E_V, r.KL, jnp.asarray(q, r.KL.dtype), jnp.asarray(True))


@jax.jit
def quantilizer_tree_kl(tree: mdp.Tree, kl: Array) -> Budgeted:
    """The quantilizer whose trajectory KL is at most `kl`: q solved in [e^-kl, 1]; param = q.

    The cap pi <= pi0/q bounds each state's KL by log(1/q), but the trajectory
    KL sums them along the path (up to depth x log(1/q)): q = e^-kl spent 2.36
    on a budget of 1. Bisection on log(1/q) keeps the end whose KL is <= kl
    (exists; a NaN KL, float32 overflow, is left to the caller to refuse).
    """
    kl = jnp.asarray(kl, tree.X[-1].dtype)

    def spent(x):  # increasing in x = log(1/q)
        r = quantilizer_tree(tree, jnp.exp(-x))
        return r.KL - kl, r

    _, r = bisect_then(spent, jnp.zeros_like(kl), kl)  # KL <= kl (at x = 0, q = 1: pi0, KL 0)
    return r._replace(exists=~(r.KL > kl))


# ----------------------------------------------------------------------------
# Section 6.1: sigmoid(E_P[U]) - beta KL.

_GRID = 48  # points in lam on (0, lam_max] where the objective is compared before the bisection


def _sigmoid_of_mean(stats_at: Callable, beta: Array, lam_max: Array) -> SigmoidOfMean:
    """Maximise sigmoid(m(lam)) - beta KL(lam) over the tilts lam in (0, lam_max].

    The objective is compared on a grid lam_j = lam_max (j/J)^3 (dense near 0,
    where a large beta puts the optimum), and the stationarity condition
    h(lam) = beta lam - sigmoid'(m(lam)) = 0 is bisected on the best grid
    point's two neighbouring cells: h < 0 left of a maximum, > 0 right of it.
    The grid picks the global maximum where h has several roots (E_Q[U] far
    below 0 can give two local maxima).

    One loop (`roots.bisect_then` with a grid) evaluates stats_at at one point
    a pass: the J grid points, then the bisection's midpoints, then the final
    midpoint, so stats_at (a quadrature, or a tree's backward pass) is traced
    and compiled once rather than three times (grid, bisection, result).

    Args:
      stats_at: lam [] -> (E_U, E_V, KL) of the tilt P ∝ Q e^{lam U}.
      beta: [] > 0.
      lam_max: [] the largest lam tried (<= 1 / (4 beta), inside the tilt's domain).
    """
    objective = lambda r: jax.nn.sigmoid(r[0]) - beta * r[2]  # noqa: E731
    frac = (jnp.arange(1, _GRID + 1, dtype=beta.dtype) / _GRID) ** 3
    lam_max = jnp.asarray(lam_max, beta.dtype)

    def h(lam):
        r = stats_at(lam)
        m = r[0]
        # Past the tilt's domain or at an infinite mean, m is not finite: that is right of the optimum.
        return jnp.where(jnp.isfinite(m), beta * lam - jax.nn.sigmoid(m) * jax.nn.sigmoid(-m), 1.0), r

    b, (E_U, E_V, KL) = bisect_then(h, jnp.zeros_like(beta), lam_max, at="root", grid=lam_max * frac,
                                    score=objective)
    return SigmoidOfMean(objective((E_U, E_V, KL)), E_U, E_V, KL, b.root, jnp.asarray(True))


@jax.jit
def sigmoid_of_mean_tree(tree: mdp.Tree, beta: Array) -> SigmoidOfMean:
    """Section 6.1's bounded objective on a tree: max over pi of sigmoid(E_pi[U]) - beta KL(Tr(pi) || Tr(pi0)).

    The maximiser is the soft optimum `mdp.soft_optimum(tree, 1 / lam)` for
    the lam with lam = sigmoid'(E_pi[U]) / beta (see the module docstring), so
    lam <= 1 / (4 beta): however small beta, the policy is never tilted
    harder than the KL-penalised optimum at 4 beta.

    Args:
      tree: the tree.
      beta: [] > 0.
    Returns:
      `SigmoidOfMean` with [] fields (exists is always True: the tree is finite).
    """
    beta = jnp.asarray(beta, tree.X[-1].dtype)

    def stats_at(lam):
        r = mdp.soft_optimum(tree, 1.0 / lam)
        return r.E_U, r.E_V, r.KL

    return _sigmoid_of_mean(stats_at, beta, 0.25 / beta)


@jax.jit
def sigmoid_of_mean_tilt(error: Family, utility: Family, beta: Array) -> SigmoidOfMean:
    """Section 6.1's bounded objective on the continuous model: max over P of sigmoid(E_P[U]) - beta KL(P || Q).

    U = X + V with X ~ error, V ~ utility independent. The maximiser is the
    tilt `tilting.tilt(error, utility, 1 / lam)` with lam = sigmoid'(E_P[U]) / beta,
    searched on lam < min(1 / (4 beta), s*) with s* the smaller MGF abscissa.
    Where s* = 0 (heavy-tailed X or V) no tilt exists and the supremum, 1, is
    not attained: laws with E_P[U] -> inf and KL -> 0 approach it (Theorem 1's
    upweighting). Then exists is False, objective = 1, E_U = inf, KL = 0, and
    E_V = E_Q[V], its limit along every maximising sequence when V is
    light-tailed (KL -> 0 forces E_P[V] -> E_Q[V], Theorem 3; NaN when V is
    heavy-tailed). That is the paper's "all near-optimal policies will have V ≈ 0".

    Args:
      error: family of X.
      utility: family of V.
      beta: [] > 0.
    Returns:
      `SigmoidOfMean` with [] fields.
    """
    beta = as_float(beta)
    s = jnp.minimum(jnp.asarray(error.mgf_sup, beta.dtype), jnp.asarray(utility.mgf_sup, beta.dtype))
    exists = s > 0
    # Just inside the domain: the tilt's mean diverges at lam = s* for every family here.
    lam_max = jnp.minimum(0.25 / beta, jnp.where(exists, s, 1.0) * (1.0 - 1e-6))

    def stats_at(lam):
        r = tilt(error, utility, 1.0 / lam)
        return r.E_U, r.E_V, r.KL

    r = _sigmoid_of_mean(stats_at, beta, lam_max)
    limit_E_V = jnp.where(jnp.asarray(utility.mgf_sup) > 0, jnp.asarray(utility.mean, beta.dtype), jnp.nan)
    keep = lambda a, heavy: jnp.where(exists, a, jnp.asarray(heavy, beta.dtype))  # noqa: E731
    return SigmoidOfMean(keep(r.objective, 1.0), keep(r.E_U, jnp.inf), keep(r.E_V, limit_E_V), keep(r.KL, 0.0),
                         keep(r.lam, 0.0), exists)


# ----------------------------------------------------------------------------
# Continuous model: KL target, quantilizer, the post's bounded reward.


@jax.jit
def kl_target_tilt(error: Family, utility: Family, target: Array) -> Budgeted:
    """The continuous KL-penalised optimum with KL = target (beta solved); exists False if none."""
    target = as_float(target)

    def kl(lb):  # decreasing in log beta
        r = tilt(error, utility, jnp.exp(lb))
        return r.KL - target, r

    b, r = bisect_then(kl, jnp.full_like(target, _LOG_BETA[1]), jnp.full_like(target, _LOG_BETA[0]))  # KL <= target
    ok = r.exists & spends(r.KL, target)
    return Budgeted(r.E_U, r.E_V, r.KL, jnp.exp(b.neg), ok)


@jax.jit
def quantilizer_continuous(error: Family, utility: Family, kl: Array, t_range=(-50.0, 500.0)) -> Budgeted:
    """The q-quantilizer with q = e^{-kl}: Q conditioned on U >= t_q, P(U >= t_q) = q.

    E_U holds t_q, a lower bound on E_P[U] (the conditional mean of U is not computed).
    """
    kl = as_float(kl)

    def lp(t):  # decreasing in t
        r = threshold(error, utility, t)
        return r.log_p + kl, r

    b, r = bisect_then(lp, jnp.full_like(kl, t_range[1]), jnp.full_like(kl, t_range[0]), at="root")
    return Budgeted(b.root, r.E_V, -r.log_p, b.root, jnp.abs(r.log_p + kl) < 1e-3 * (1 + kl))


MIN_ESS = 1000.0  # effective sample size below which `sigmoid_proxy_tilt_mc` refuses its estimates


@functools.partial(jax.jit, static_argnames="num_samples")
def sigmoid_proxy_tilt_mc(key: Array, error: Family, utility: Family, beta: Array,
                          num_samples: int = 200_000) -> BudgetedMC:
    """The post's bounded reward: P ∝ Q exp(sigmoid(U)/beta), the maximiser of E_P[sigmoid(U)] - beta KL.

    Estimated by self-normalised weighting of draws from Q (`importance.snis`)
    with w = exp(sigmoid(U)/beta) <= e^{1/beta}. E_U holds E_P[sigmoid(U)];
    KL = E_P[log w] - log E_Q[w], both taken with log w shifted by its maximum
    (no cancellation of terms ~1/beta). Where the weights collapse onto a few
    draws (effective sample size < MIN_ESS: beta -> 0 with a fixed S) the
    estimates are NaN and exists is False (`WHY_NOT["bounded"]`). Not Section
    6.1's sigmoid(E_P[U]) - beta KL (`sigmoid_of_mean_tilt`). E_V is NaN where
    V has no finite mean, E_V_se where it has no finite variance either
    (`why_not_finite`).

    Args:
      key: PRNG key.
      error, utility: families of X and V.
      beta: [] > 0.
      num_samples: S draws of (X, V) (static).
    Returns:
      `BudgetedMC` with [] fields.
    """
    kx, kv = jax.random.split(key)
    beta = as_float(beta)
    x = error.sample(kx, (num_samples,), beta.dtype)
    v = utility.sample(kv, (num_samples,), beta.dtype)
    s = jax.nn.sigmoid(x + v)
    lw = s / beta
    lw = lw - jnp.max(lw)  # the same weights; E_P[lw] and log E_Q[w] then carry no 1/beta to cancel
    r = snis(lw, jnp.stack([v, s, lw], axis=1))
    ok = r.ess >= MIN_ESS
    keep = lambda a, also=True: jnp.where(ok & also, a, jnp.nan)  # noqa: E731
    # E_P[V] and its standard error exist where E_Q[V] and Var_Q(V) do (`why_not_finite`): a sample mean of a
    # Cauchy V converges to nothing, yet printed 4.72 +- 0.67.
    mean_ok, var_ok = jnp.isfinite(utility.mean), jnp.isfinite(utility.dist.variance)
    E_V, E_s, E_lw = r.estimate[0], r.estimate[1], r.estimate[2]
    return BudgetedMC(keep(E_s), keep(E_V, mean_ok), keep(E_lw - r.log_mean_w), beta, ok,
                      keep(r.se[0], mean_ok & var_ok), r.ess)


def why_not_finite(utility: Family) -> dict[str, str]:
    """Which E_V fields of the continuous model's rows are not numbers, and why: {field: reason}, empty when all are.

    E_V is E_P[V], E_V_se the standard error of the bounded reward's Monte
    Carlo estimate of it. For each continuous P here, E_P[V] is finite iff
    E_Q[V] is: the bounded reward's dP/dQ = w / E_Q[w] with
    1 <= w = exp(sigmoid(U)/beta) <= e^{1/beta} is bounded above and away from
    0, so E_P|V| and E_Q|V| are finite together, as are E_P[V^2] and E_Q[V^2];
    the quantilizer's P = Q(. | U >= t_q) has dP/dQ <= 1/q and keeps V's right
    tail (P(U >= t_q | V = v) -> 1 as v -> inf), which is where every family
    here with an infinite mean has it (E[V | U >= t_q] = +inf); the tilts
    (kl_target, bounded_mean) exist only for a light-tailed V. The
    self-normalised estimate's standard error, sqrt(E_Q[w^2 (V - E_P V)^2]) /
    (E_Q[w] sqrt(S)), is finite iff Var_Q(V) is. E_U (E_P[sigmoid(U)] or the
    tilt's) and KL (|log w| <= 1/beta) do not depend on V's moments, nor does
    anything on X's. Host-side: V's moments as `tails.Family` gives them,
    evaluated in float64.

    Args:
      utility: family of V.
    Returns:
      {"E_V" and/or "E_V_se": why it is not a number to print}.
    """
    with jax.enable_x64(True):
        mean, var = float(utility.mean), float(utility.dist.variance)
    if not math.isfinite(mean):
        return dict(E_V=f"E_V: {utility} has no finite mean, nor has E_P[V] (P keeps V's right tail: dP/dQ is "
                        "bounded away from 0 there)", E_V_se=f"E_V_se: {utility} has no finite mean: no standard error")
    if not math.isfinite(var):
        return dict(E_V_se=f"E_V_se: {utility} has infinite variance, so the Monte Carlo estimate of E_V has no "
                           "finite standard error (E_V itself converges: its mean is finite)")
    return {}


WHY_NOT = dict(kl_target="no beta in [1e-3, 1e4] spends KL = budget (to sqrt(eps) relative, never over): more than "
                         "this model can spend, less than its float resolves, or a heavy tail (no tilt)",
               quantilizer="no threshold t_q in [-50, 500] leaves tail mass e^-budget",
               bounded_mean="heavy tail: the supremum is approached, not attained (no tilt exists)",
               bounded=f"the Monte Carlo's weights exp(sigmoid(U)/beta) collapse onto a few draws (effective sample "
                       f"size < {MIN_ESS:g}): beta too small for num_samples; not estimated")
"""Why a method's row has no numbers (exists False), by method name."""
NOT_FINITE = "E_U, E_V or KL came out NaN or inf at this budget (float32 range): not reported"


# ----------------------------------------------------------------------------
# Old names, kept working for sims/mitigations.py.

bounded_tree = sigmoid_proxy_tree


def bounded_tilt_mc(key: Array, error: Family, utility: Family, beta: Array, num_samples: int = 200_000):
    """Deprecated: `sigmoid_proxy_tilt_mc` as the old pair (Budgeted, se of E_V).

    Args:
      key: a `jax.random` key.
      error: the error family X.
      utility: the utility family V.
      beta: [] the KL coefficient.
      num_samples: importance samples.
    """
    r = sigmoid_proxy_tilt_mc(key, error, utility, beta, num_samples)
    return Budgeted(r.E_U, r.E_V, r.KL, r.param, r.exists), r.E_V_se
