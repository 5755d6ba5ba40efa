"""The Theorem 2 construction on a tree, and E[V | U >= t] under pi0.

rho_t(tau) = (1 - c/t) / F_Q(t) rho0(tau) if U(tau) <= t, else (c/t) / Fbar_Q(t) rho0(tau), with Q the law of U
under pi0 (Theorem 2 of Kwa et al. 2024).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.special import logsumexp

from goodhart_jax.mdp.backward import TreeResult, backward, soft_weights
from goodhart_jax.mdp.sharding import logsumexp_levels, on_mesh, sum_levels
from goodhart_jax.mdp.tree import Levels, Tree, TreeSpec, action_values, spec_of, terminal_logprobs, terminal_values

__all__ = ["Thm2Policy", "Thm2Result", "ConditionalValue", "thm2_policy", "thm2", "conditional_value"]


class Thm2Policy(NamedTuple):
    """The Theorem 2 construction on a tree."""

    pi: tuple  # L arrays [n^k, A]: the policy inducing rho_t
    log_rho: Levels  # rho_t's log-probabilities per level
    exists: Array  # [] bool: t > c > 0, some terminal has U > t and some U <= t


class Thm2Result(NamedTuple):
    """Expectations under the Theorem 2 policy (unpacks as `stats, exists`)."""

    stats: TreeResult  # E_U, E_V, KL, KL_per_state of the policy
    exists: Array  # bool: whether the construction is defined (see `Thm2Policy`)


class ConditionalValue(NamedTuple):
    """E[V | U >= t] under pi0 (the fields of `conditioning.ConditionalValue`); fields [] (or [K])."""

    E_V: Array  # E[V | U >= t]
    log_p: Array  # log P(U >= t), -inf where no terminal qualifies


def _base_logprobs(tree: Tree, spec: TreeSpec, axis: str | None = None) -> Levels:
    """log Tr(pi0) of each terminal, per level (inside `shard_map`: this device's part of the split levels)."""
    return terminal_logprobs(spec, tree.log_pi0, axis, dtype=tree.X[-1].dtype)


def thm2_policy(tree: Tree, t: Array, c: Array) -> Thm2Policy:
    """The Theorem 2 construction: rho_t and the policy that induces it.

    rho_t(tau) = (1 - c/t) / F_Q(t) rho0(tau) if U(tau) <= t, else
    (c/t) / Fbar_Q(t) rho0(tau), with Q the law of U under pi0; the policy is
    pi(a|s) = rho_t(next token a | prefix s).

    Args:
      tree: a `Tree` (`make_tree`).
      t: [] threshold, > c.
      c: [] > 0, the tail mass is c / t.
    Returns:
      `Thm2Policy` (pi, log_rho, exists): the policy (L arrays [n^k, A] of
      probabilities), rho_t's log-probabilities per level, and whether the
      construction is defined (t > c > 0 and some terminal has U > t and some U <= t).
    """
    spec = spec_of(tree)
    U = terminal_values(tree)
    lr0 = _base_logprobs(tree, spec)
    exists, w_lo, w_hi = _thm2_weights(tree, spec, t, c, lr0)
    log_rho = tuple(l + jnp.where(u > t, w_hi, w_lo) for l, u in zip(lr0, U))
    # Backward: log-mass under each state; pi(a|s) = M(child) / M(s).
    M = log_rho[-1]
    pi = [None] * spec.depth
    for k in reversed(range(spec.depth)):
        kids = action_values(spec, M, log_rho[k])  # [n^k, A]
        Ms = logsumexp(kids, axis=1, keepdims=True)
        reach = jnp.isfinite(Ms)
        pi[k] = jnp.exp(jnp.where(reach, kids - jnp.where(reach, Ms, 0.0), tree.log_pi0[k]))
        M = Ms[:, 0]
    return Thm2Policy(tuple(pi), log_rho, exists)


def _thm2_weights(tree: Tree, spec: TreeSpec, t, c, lr0: Levels, axis: str | None = None):
    """(exists, log w_lo, log w_hi): rho_t / rho0 below and above t."""
    U = terminal_values(tree)
    log_F = logsumexp_levels(tuple(jnp.where(u > t, -jnp.inf, l) for l, u in zip(lr0, U)), spec, axis)
    log_Fbar = logsumexp_levels(tuple(jnp.where(u > t, l, -jnp.inf) for l, u in zip(lr0, U)), spec, axis)
    exists = (c > 0) & (t > c) & jnp.isfinite(log_F) & jnp.isfinite(log_Fbar)
    return exists, jnp.log1p(-c / t) - log_F, jnp.log(c / t) - log_Fbar


def _thm2(tree: Tree, spec: TreeSpec, t: Array, c: Array, axis: str | None = None) -> Thm2Result:
    exists, w_lo, w_hi = _thm2_weights(tree, spec, t, c, _base_logprobs(tree, spec, axis), axis)
    # rho_t = rho0 exp(r) with r = log(rho_t / rho0) is the soft optimum at beta = 1 for reward r: one fused pass.
    ok = lambda w: jnp.where(exists, w, 0.0)  # noqa: E731  (an undefined construction: finite numbers, flagged)
    reward = lambda u: jnp.where(u > t, ok(w_hi), ok(w_lo))  # noqa: E731
    one = jnp.ones((), tree.X[-1].dtype)
    return Thm2Result(backward(tree, spec, soft_weights(tree, one), one, reward, axis)[0], exists)


def thm2(tree: Tree, t: Array, c: Array, mesh: jax.sharding.Mesh | None = None,
         leaf_axis: str = "leaf") -> Thm2Result:
    """`TreeResult` of the Theorem 2 policy and whether it is defined (unpacks as `stats, exists`).

    rho_t = rho0 exp(r) with r = log(rho_t / rho0) is the soft optimum at beta = 1 for the reward r (the
    normaliser is 1), so one fused backward pass gives its expectations. With a `mesh`, the tree is split
    along its leaves over `leaf_axis`.

    Args:
      t: [] threshold, > c.
      c: [] > 0, the tail mass is c / t.
    """
    if mesh is not None:
        return on_mesh(_thm2, spec_of(tree), mesh, leaf_axis, tree, t, c)
    return _thm2(tree, spec_of(tree), t, c)


def _conditional_value(tree: Tree, spec: TreeSpec, t: Array, axis: str | None = None) -> ConditionalValue:
    lr0 = _base_logprobs(tree, spec, axis)
    U = terminal_values(tree)
    lw = tuple(jnp.where(u >= t, l, -jnp.inf) for l, u in zip(lr0, U))
    log_p = logsumexp_levels(lw, spec, axis)
    shift = jnp.where(jnp.isfinite(log_p), log_p, 0.0)
    return ConditionalValue(sum_levels(tuple(jnp.exp(w - shift) * v for w, v in zip(lw, tree.V)), spec, axis),
                           log_p)


def conditional_value(tree: Tree, t: Array, mesh: jax.sharding.Mesh | None = None,
                      leaf_axis: str = "leaf") -> ConditionalValue:
    """E[V | U >= t] under pi0, and log P(U >= t) (-inf where no terminal qualifies).

    Args:
      tree: a `Tree` (`make_tree`).
      mesh: optional device mesh: the tree split along its leaves over it.
      leaf_axis: name of the mesh axis the leaves are split over.
    Returns:
      `ConditionalValue` (E_V, log_p) with [] fields.
    """
    if mesh is not None:
        return on_mesh(_conditional_value, spec_of(tree), mesh, leaf_axis, tree, t)
    return _conditional_value(tree, spec_of(tree), t)
