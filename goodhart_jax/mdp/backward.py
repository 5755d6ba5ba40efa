"""The backward pass: the exact KL-penalised optimum and any policy's expectations, one fused pass.

The exact optimum of E[U] - beta KL(Tr(pi) || Tr(pi0)) is soft backward induction (Theorem 4):
W(leaf) = U, W(s) = beta log sum_a pi0(a|s) exp(W(sa)/beta), pi*(a|s) = pi0(a|s) exp((W(sa) - W(s)) / beta).
Policies are per-level probabilities `pi[k]`: [n^k, A].
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from goodhart_jax.mdp.sharding import gather, on_mesh
from goodhart_jax.mdp.tree import Tree, TreeSpec, action_values, spec_of, split_level, terminal_values

__all__ = ["TreeResult", "Policy", "backward", "soft_weights", "optimal_policy", "soft_optimum", "soft_optimum_part",
           "trajectory_stats"]


class TreeResult(NamedTuple):
    """Expectations under a policy; fields [] (or [K] in a sweep)."""

    E_U: Array  # E_pi[U]
    E_V: Array  # E_pi[V]
    KL: Array  # KL(Tr(pi) || Tr(pi0)), the trajectory KL
    KL_per_state: Array  # E_{s in T, T ~ Tr(pi)}[KL(pi(s) || pi0(s))], T's states averaged


class Policy(NamedTuple):
    """A policy and the objective it attains."""

    pi: tuple  # L arrays [n^k, A]: pi(a|s)
    value: Array  # [] the objective at the root (what the policy maximises; see the function)


class _Below(NamedTuple):
    """What the backward pass carries up: per state of the level below ([n^(k+1)]; the leaves first)."""

    W: Array  # the value the policy sees (soft value; at a terminal, its reward)
    EU: Array
    EV: Array
    KL: Array | None  # trajectory KL from here on (None: 0, at the leaves)
    G: Array | None  # per-state KL accumulator (None: 0)
    H: Array | None  # E[1/|T|] (None: 1/L, every leaf and every state of a tree without EOS)


def _rowsums(ops: list) -> list:
    """Row sums of several [m, A] arrays in one variadic reduction: each element is computed once, in one pass."""
    zeros = tuple(jnp.zeros((), o.dtype) for o in ops)
    return list(jax.lax.reduce(tuple(ops), zeros, lambda a, b: tuple(x + y for x, y in zip(a, b)), (1,)))


def backward(tree: Tree, spec: TreeSpec, weights_at, scale, reward=None, axis: str | None = None,
              record: list | None = None) -> tuple[TreeResult, Array]:
    """One fused backward pass: the policy level by level, and its expectations, one reduction per level.

    Expectations are accumulated bottom-up instead of by a forward pass over
    reach probabilities, so nothing of size [leaves] outlives its level:
      E_U(s) = sum_a pi(a|s) E_U(sa),  KL(s) = KL(pi(s)||pi0(s)) + sum_a pi(a|s) KL(sa),
      H(s) = E[1 / |T| | s],  G(s) = KL(pi(s)||pi0(s)) H(s) + sum_a pi(a|s) G(sa),
    where |T| is the number of actions of the trajectory; G(root) is the
    per-state KL E_T[(1/|T|) sum_{s in T} KL(pi(s)||pi0(s))]. With pi = e / S, S = sum_a e, every sum above
    and KL(pi(s)||pi0(s)) = sum_a e log(e/pi0) / S - log S come from one variadic row reduction of e and its
    products; no [states, A] policy array is kept (unless `record` asks for it).

    Args:
      tree, spec: the tree (inside `shard_map`: this device's part) and its whole shape.
      weights_at: (k, W_kids [m, A]) -> (e [m, A] >= 0, log(e / pi0) [m, A], shift [m]): pi(a|s) = e / S,
        and the value carried up is W(s) = scale (shift + log S).
      scale: [] beta for the soft optimum.
      reward: U -> the value a terminal shows the policy (default U).
      axis: the leaf axis inside `shard_map`, or None: levels below `split_level` are gathered, then finished
        on every device.
      record: a list of L slots to receive pi per level [m, A], or None.
    Returns:
      (result, W(root)).
    """
    reward = reward or (lambda u: u)
    split = split_level(spec, jax.lax.axis_size(axis)) if axis is not None else 0
    U = terminal_values(tree)
    dtype = U[-1].dtype
    c = _Below(reward(U[-1]), U[-1], tree.V[-1], None, None, None)
    for k in reversed(range(spec.depth)):
        if axis is not None and k + 1 == split:
            c = jax.tree.map(lambda x: gather(x, axis), c)
        m = tree.log_pi0[k].shape[0]
        kids = lambda below, exit_: action_values(spec, below, exit_)  # noqa: E731
        e, logr, shift = weights_at(k, kids(c.W, reward(U[k])))
        ops = [e, jnp.where(e > 0, e * logr, 0.0), e * kids(c.EU, U[k]), e * kids(c.EV, tree.V[k])]
        if spec.eos:
            h = jnp.full((m * spec.n,), 1.0 / spec.depth, dtype) if c.H is None else c.H
            ops.append(e * kids(h, jnp.full((m,), 1.0 / (k + 1), dtype)))
        if c.KL is not None:
            zero = jnp.zeros((m if spec.eos else 0,), dtype)
            ops += [e * kids(c.KL, zero), e * kids(c.G, zero)]
        S, *sums = _rowsums(ops)
        inv, logS = 1.0 / S, jnp.log(S)
        kl = sums[0] * inv - logS
        H = sums[3] * inv if spec.eos else None
        h = H if spec.eos else 1.0 / spec.depth
        KL = kl if c.KL is None else kl + sums[-2] * inv
        G = kl * h if c.KL is None else kl * h + sums[-1] * inv
        if record is not None:
            record[k] = e * inv[:, None]
        c = _Below(scale * (shift + logS), sums[1] * inv, sums[2] * inv, KL, G, H)
    return TreeResult(c.EU[0], c.EV[0], c.KL[0], c.G[0]), c.W[0]


def soft_weights(tree: Tree, beta: Array):
    """weights_at for the KL-penalised optimum: pi = softmax(log pi0 + W_kids / beta).

    Args:
      tree: a `Tree` (`make_tree`).
    """

    def weights_at(k, w_kids):
        lp0 = tree.log_pi0[k]
        z = lp0 + w_kids / beta  # [m, A]
        mx = jnp.max(z, axis=1)
        d = z - mx[:, None]
        # log pi* - log pi0 = d - log S - log pi0: all O(KL) terms. The shorter sum_a pi* q - log Z cancels two
        # numbers of size U/beta (KL 0.0 for U ~ 1e18, beta = 1 in float32).
        return jnp.exp(d), d - lp0, mx

    return weights_at


def optimal_policy(tree: Tree, beta: Array) -> Policy:
    """The maximiser of E[U] - beta KL(Tr(pi) || Tr(pi0)) (Theorem 4).

    Soft backward induction: W(leaf) = U, W(s) = beta log sum_a pi0(a|s) exp(W(sa)/beta),
    pi*(a|s) = pi0(a|s) exp((W(sa) - W(s)) / beta).

    Args:
      tree: the tree.
      beta: [] > 0.
    Returns:
      `Policy`: pi, L arrays [n^k, A] of pi*(a|s); value, the optimal objective
      W(root) = beta log E_pi0[exp(U / beta)].
    """
    pis = [None] * len(tree.log_pi0)
    _, W0 = backward(tree, spec_of(tree), soft_weights(tree, beta), beta, record=pis)
    return Policy(tuple(pis), W0)


def soft_optimum_part(tree: Tree, spec: TreeSpec, beta: Array, axis: str | None = None) -> TreeResult:
    """`soft_optimum` of a tree of shape `spec` (inside `shard_map` with the leaf `axis`: this device's part).

    Args:
      beta: [] the KL coefficient (> 0).
    """
    return backward(tree, spec, soft_weights(tree, beta), beta, axis=axis)[0]


def soft_optimum(tree: Tree, beta: Array, mesh: jax.sharding.Mesh | None = None,
                 leaf_axis: str = "leaf") -> TreeResult:
    """E_U, E_V and both KLs of the exact KL-penalised optimum pi*(beta) (one fused backward pass).

    With a `mesh`, the tree is split along its leaves over `leaf_axis` (`tree_sharding`); the result is the same.
    """
    if mesh is not None:
        return on_mesh(soft_optimum_part, spec_of(tree), mesh, leaf_axis, tree, beta)
    return soft_optimum_part(tree, spec_of(tree), beta)


def trajectory_stats(tree: Tree, pi: tuple) -> TreeResult:
    """E_U, E_V, trajectory KL and per-state KL of any policy.

    The trajectory KL is the chain rule sum_s P_pi(reach s) KL(pi(s) || pi0(s));
    the per-state KL averages KL(pi(s) || pi0(s)) over the states of each
    trajectory (the paper's E_{s in T, T ~ Tr(pi)}), then over trajectories.

    Args:
      tree: the tree.
      pi: L arrays [n^k, A] of policy probabilities.
    """
    def weights_at(k, _):
        p = pi[k]
        return p, jnp.log(jnp.where(p > 0, p, 1.0)) - tree.log_pi0[k], jnp.zeros(p.shape[:1], p.dtype)

    return backward(tree, spec_of(tree), weights_at, 0.0)[0]
