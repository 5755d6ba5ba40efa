"""Exact best-of-n from pi0 on the proxy, over the enumerated terminal sequences of a tree.

Draw n sequences i.i.d. from pi0 and keep the one with the largest proxy r.
With the proxy values sorted and F(v) = pi0(r <= v), F(v-) = pi0(r < v), the
best has value v with probability F(v)^n - F(v-)^n; a value shared by several
sequences (a tie) is split among them in proportion to their pi0 mass (the
first draw attaining the maximum is distributed as pi0 restricted to the tie):

    P_n(x) = pi0(x) / m(v) * (F(v)^n - F(v-)^n),   v = r(x), m(v) = F(v) - F(v-).

Everything is in log space: log(F^n - F_-^n) = n log F + log(1 - exp(-n d)),
d = log F - log F_- = -log1p(-m / F), and log F = log1p(-pi0(r > v)) in the
upper half, so n up to 4^8 and far beyond keeps full precision. The KL is
exact, KL(P_n || pi0) = sum_v P_n(v) log(P_n(v) / m(v)) (the split inside a tie
is pi0's, so it adds nothing), and lies below log n - (n - 1)/n (Gao, Schulman
& Hilton 2023; Beirami et al. 2024).

Sequences are flat: any fixed order of the N terminal sequences, e.g. mdp's
level order of `lab.tree` (`bon_tree` takes a lab `mdp.Tree`).

Glossary: N terminal sequences, K values of n.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.special import logsumexp

from goodhart_jax import mdp
from goodhart_jax.best_of_n import kl_bound
from goodhart_jax.lab import tree as lab_tree

__all__ = ["LabBon", "TieGroups", "tie_groups", "bon_logprobs", "bon_stats", "bon_tree"]


class TieGroups(NamedTuple):
    """pi0's law of the proxy: the sequences sorted by proxy and grouped by equal value.

    Groups are numbered 0 .. G-1 from the lowest value; arrays of groups are
    [N] with entries G .. N-1 unused (log_m = -inf).
    """

    order: Array  # [N] int: sequence indices sorted by proxy (ascending, stable)
    group: Array  # [N] int: group of each sorted sequence
    log_p0: Array  # [N] normalised log pi0 of each sorted sequence
    value: Array  # [N] proxy value of each group
    log_m: Array  # [N] log pi0 mass of each group
    log_F: Array  # [N] log F(v) = log pi0(r <= v)
    d: Array  # [N] log F(v) - log F(v-) >= 0 (inf for the lowest group)


class LabBon(NamedTuple):
    """Exact best-of-n statistics; fields [K] (or [] for a scalar n)."""

    gold: Array  # E_{P_n}[gold]
    proxy: Array  # E_{P_n}[proxy]
    KL: Array  # KL(P_n || pi0), exact
    KL_bound: Array  # log n - (n - 1)/n


def _log1mexp(x: Array) -> Array:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Maechler 2012)."""
    x = jnp.minimum(x, 0.0)
    return jnp.where(x > -0.6931471805599453, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def tie_groups(log_p0: Array, proxy: Array) -> TieGroups:
    """Sort the sequences by proxy, group ties, and tabulate pi0's CDF per group in log space.

    Args:
      log_p0: [N] log pi0 of each sequence (normalised here).
      proxy: [N] proxy reward of each sequence.
    Returns:
      `TieGroups`.
    """
    N = proxy.shape[0]
    order = jnp.argsort(proxy, stable=True)
    s = proxy[order]
    l = log_p0[order]
    l = l - logsumexp(l)
    new = jnp.concatenate([jnp.ones((1,), bool), s[1:] != s[:-1]])
    group = jnp.cumsum(new) - 1
    seg_max = jax.ops.segment_max(l, group, N)
    seg_max = jnp.where(jnp.isfinite(seg_max), seg_max, 0.0)
    log_m = seg_max + jnp.log(jax.ops.segment_sum(jnp.exp(l - seg_max[group]), group, N))
    value = jax.ops.segment_max(s, group, N)
    log_fwd = jax.lax.cumlogsumexp(log_m)  # log pi0(r <= v)
    log_above = jax.lax.cumlogsumexp(log_m, reverse=True)  # log pi0(r >= v) ...
    log_above = jnp.concatenate([log_above[1:], jnp.full((1,), -jnp.inf, l.dtype)])  # ... then r > v
    log_F = jnp.where(log_above < jnp.log(0.5), jnp.log1p(-jnp.exp(log_above)), log_fwd)
    log_F = jnp.minimum(log_F, 0.0)
    # d = log F - log F_- = -log(1 - m / F): relative precision even for a tiny tie near the top.
    d = -_log1mexp(jnp.minimum(log_m - log_F, 0.0))
    d = jnp.where(jnp.arange(N) == 0, jnp.inf, d)
    return TieGroups(order, group, l, value, log_m, log_F, d)


def _group_logprobs(g: TieGroups, n: Array) -> Array:
    """[N] log P(best-of-n has the value of group j) = n log F + log(1 - exp(-n d))."""
    n = jnp.asarray(n, g.log_F.dtype)
    lp = n * g.log_F + _log1mexp(-n * g.d)
    return jnp.where(jnp.isfinite(g.log_m), lp, -jnp.inf)


def bon_logprobs(log_p0: Array, proxy: Array, n: Array) -> Array:
    """log P_n(x): the exact law of the best of n i.i.d. draws from pi0, ranked by the proxy.

    P_n(x) = pi0(x) / m(r(x)) * (F(r(x))^n - F(r(x)-)^n) (see the module docstring).

    Args:
      log_p0: [N] log pi0 per sequence.
      proxy: [N] proxy reward per sequence.
      n: [] number of draws, >= 1 (float or int; traced).
    Returns:
      [N] log-probabilities, in the input order.
    """
    g = tie_groups(log_p0, proxy)
    lg = _group_logprobs(g, n)
    sorted_lp = g.log_p0 - g.log_m[g.group] + lg[g.group]
    return jnp.zeros_like(sorted_lp).at[g.order].set(sorted_lp)


def bon_stats(log_p0: Array, proxy: Array, gold: Array, ns: Array) -> LabBon:
    """Exact E[gold], E[proxy] and KL(P_n || pi0) of best-of-n, for every n in `ns`.

    One sort serves every n; the per-n work is vmapped ([K, N] in memory).

    Args:
      log_p0: [N] log pi0 per sequence.
      proxy: [N] proxy reward per sequence (the ranking).
      gold: [N] gold reward per sequence.
      ns: [K] values of n >= 1 (or a scalar).
    Returns:
      `LabBon` with fields shaped like `ns`.
    """
    g = tie_groups(log_p0, proxy)
    gold_sorted = gold[g.order]
    ok = jnp.isfinite(g.log_m)

    def one(n):
        lg = _group_logprobs(g, n)
        pg = jnp.exp(lg)
        kl = jnp.sum(jnp.where(ok & (pg > 0), pg * (lg - jnp.where(ok, g.log_m, 0.0)), 0.0))
        E_r = jnp.sum(jnp.where(ok, pg * g.value, 0.0))
        px = jnp.exp(g.log_p0 - g.log_m[g.group] + lg[g.group])
        return jnp.sum(px * gold_sorted), E_r, jnp.maximum(kl, 0.0)

    ns = jnp.asarray(ns, g.log_F.dtype)
    G, R, KL = jax.vmap(one)(ns.reshape(-1))
    shape = ns.shape
    return LabBon(G.reshape(shape), R.reshape(shape), KL.reshape(shape), kl_bound(ns))


def bon_tree(tree: mdp.Tree, ns: Array) -> LabBon:
    """`bon_stats` on a lab tree (EOS last, `lab.tree.mdp_tree`): proxy U = X + V, gold V.

    Args:
      tree: `mdp.Tree` with EOS.
      ns: [K] values of n >= 1.
    """
    proxy = lab_tree.flatten(mdp.terminal_values(tree))
    return bon_stats(lab_tree.terminal_logprobs(tree.log_pi0), proxy, lab_tree.flatten(tree.V), ns)
