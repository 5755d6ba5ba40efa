"""Variants of KL-regularised optimisation and proposed fixes (Section 6.1; "Goodhart seems preventable").

(a) A KL target instead of a fixed beta: beta is solved per target (bisection
    in log beta, KL(beta) is decreasing), as adaptive-KL RLHF does.
(b) A bounded proxy sigmoid(U): the optimum of E[sigmoid(U)] - beta KL always
    exists, P ∝ Q exp(sigmoid(U)/beta).
(c) A capped odds ratio pi(a|s)/pi0(a|s) <= 1/q instead of KL (a quantilizer):
    on the continuous model this is conditioning on the top q of U, so
    E[V] = E[V | U >= t_q] with P(U >= t_q) = q and KL = log(1/q).

On the token tree (`goodhart_jax.mdp`) all three are exact. On the continuous
model (a) uses `tilting.tilt` (no optimum for heavy error), (c) uses
`conditioning.threshold`, and (b) is estimated by self-normalised weighting of
draws from Q (weights are at most e^{1/beta}).

Glossary: K sweep points (budgets), A actions, L depth.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.special import logsumexp

from goodhart_jax import mdp
from goodhart_jax.conditioning import threshold
from goodhart_jax.tails import Family
from goodhart_jax.tilting import tilt

__all__ = ["Budgeted", "kl_target_tree", "bounded_tree", "quantilizer_policy", "quantilizer_tree",
           "kl_target_tilt", "quantilizer_continuous", "bounded_tilt_mc"]

_LOG_BETA = (math.log(1e-3), math.log(1e4))
_STEPS = 48


class Budgeted(NamedTuple):
    """An optimum at a given budget; fields []."""

    E_U: Array  # E_P[U] (E_P[sigmoid(U)] for the bounded proxy)
    E_V: Array  # E_P[V]
    KL: Array  # KL(P || Q) (trajectory KL on a tree)
    param: Array  # the knob that met the budget: beta, or the threshold t_q
    exists: Array  # bool


def _bisect(f, lo, hi, target, increasing: bool):
    """x in [lo, hi] with f(x) ~ target for monotone f (fixed number of steps)."""

    def body(_, st):
        lo, hi = st
        mid = 0.5 * (lo + hi)
        above = (f(mid) > target) == increasing
        return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

    lo, hi = jax.lax.fori_loop(0, _STEPS, body, (lo, hi))
    return 0.5 * (lo + hi)


def kl_target_tree(tree: mdp.Tree, target: Array) -> Budgeted:
    """The KL-penalised optimum whose trajectory KL equals `target` (beta solved)."""
    target = jnp.asarray(target, tree.X[-1].dtype)
    kl = lambda lb: mdp.soft_optimum(tree, jnp.exp(lb)).KL  # noqa: E731
    lb = _bisect(kl, jnp.full_like(target, _LOG_BETA[0]), jnp.full_like(target, _LOG_BETA[1]), target, False)
    r = mdp.soft_optimum(tree, jnp.exp(lb))
    return Budgeted(r.E_U, r.E_V, r.KL, jnp.exp(lb), jnp.abs(r.KL - target) < 1e-2 * (1 + target))


def bounded_tree(tree: mdp.Tree) -> mdp.Tree:
    """The same tree with proxy sigmoid(U): X' = sigmoid(X + V) - V, so X' + V = sigmoid(U)."""
    X = tuple(jax.nn.sigmoid(x + v) - v for x, v in zip(tree.X, tree.V))
    return mdp.Tree(tree.log_pi0, X, tree.V)


def quantilizer_policy(tree: mdp.Tree, q: Array) -> tuple:
    """Maximise E[U] subject to pi(a|s) <= pi0(a|s)/q at every state (backward induction).

    At a state with action values W(s a), the best capped policy fills the
    actions in decreasing W, each up to pi0(a|s)/q, until the mass is 1.

    Args:
      q: [] in (0, 1]; q = 1 gives pi0.
    Returns:
      L arrays [n^k, A] of policy probabilities.
    """
    spec = mdp._spec_of(tree)
    U = mdp.terminal_values(tree)
    W = U[-1]
    pi = [None] * spec.depth
    for k in reversed(range(spec.depth)):
        vals = mdp._children(spec, W, U[k])  # [n^k, A]
        cap = jnp.exp(tree.log_pi0[k]) / q
        order = jnp.argsort(-vals, axis=1)
        cap_s = jnp.take_along_axis(cap, order, axis=1)
        before = jnp.cumsum(cap_s, axis=1) - cap_s
        p_s = jnp.clip(1.0 - before, 0.0, cap_s)
        p = jnp.zeros_like(p_s).at[jnp.arange(p_s.shape[0])[:, None], order].set(p_s)
        pi[k] = p
        W = jnp.sum(p * vals, axis=1)
    return tuple(pi)


def quantilizer_tree(tree: mdp.Tree, q: Array) -> Budgeted:
    """`quantilizer_policy`'s expectations; param = q."""
    r = mdp.trajectory_stats(tree, quantilizer_policy(tree, q))
    return Budgeted(r.E_U, r.E_V, r.KL, jnp.asarray(q, r.KL.dtype), jnp.asarray(True))


def kl_target_tilt(error: Family, utility: Family, target: Array) -> Budgeted:
    """The continuous KL-penalised optimum with KL = target (beta solved); exists False if none."""
    target = jnp.asarray(target)
    kl = lambda lb: tilt(error, utility, jnp.exp(lb)).KL  # noqa: E731
    lb = _bisect(kl, jnp.full_like(target, _LOG_BETA[0]), jnp.full_like(target, _LOG_BETA[1]), target, False)
    r = tilt(error, utility, jnp.exp(lb))
    ok = r.exists & (jnp.abs(r.KL - target) < 1e-2 * (1 + target))
    return Budgeted(r.E_U, r.E_V, r.KL, jnp.exp(lb), ok)


def quantilizer_continuous(error: Family, utility: Family, kl: Array, t_range=(-50.0, 500.0)) -> Budgeted:
    """The q-quantilizer with q = e^{-kl}: Q conditioned on U >= t_q, P(U >= t_q) = q.

    E_U holds t_q, a lower bound on E_P[U] (the conditional mean of U is not computed).
    """
    kl = jnp.asarray(kl)
    lp = lambda t: threshold(error, utility, t).log_p  # noqa: E731
    t = _bisect(lp, jnp.full_like(kl, t_range[0]), jnp.full_like(kl, t_range[1]), -kl, False)
    r = threshold(error, utility, t)
    return Budgeted(t, r.E_V, -r.log_p, t, jnp.abs(r.log_p + kl) < 1e-3 * (1 + kl))


def bounded_tilt_mc(key: Array, error: Family, utility: Family, beta: Array, num_samples: int = 200_000):
    """P ∝ Q exp(sigmoid(U)/beta) by weighting draws of Q; returns (Budgeted, se of E_V).

    E_U holds E_P[sigmoid(U)]; KL = E_P[log w] - log E_Q[w] with w = exp(sigmoid(U)/beta).
    """
    kx, kv = jax.random.split(key)
    beta = jnp.asarray(beta)
    x = error.sample(kx, (num_samples,), beta.dtype)
    v = utility.sample(kv, (num_samples,), beta.dtype)
    s = jax.nn.sigmoid(x + v)
    lw = s / beta
    log_mean_w = logsumexp(lw) - math.log(num_samples)
    w = jnp.exp(lw - logsumexp(lw))
    E_V = jnp.sum(w * v)
    se = jnp.sqrt(jnp.sum(w * w * (v - E_V) ** 2))
    kl = jnp.sum(w * lw) - log_mean_w
    return Budgeted(jnp.sum(w * s), E_V, kl, beta, jnp.asarray(True)), se
