"""Token-tree DMRMDPs: deterministic transitions, returns on terminal states.

States are token prefixes; an action appends one of A tokens; a sequence ends
at the EOS token (the last id, A - 1, when `eos=True`) or at length L. Only the
terminal state carries a return U = X + V (Markovian return, Section 3.2 of Kwa
et al. 2024).

Layout: with n = A - 1 non-EOS tokens when `eos` else n = A, the internal states
at depth k are the n^k non-EOS prefixes, in row-major order: the children of
state i at depth k are states i * n + a at depth k + 1. Terminal returns are
stored per level: `level[k]` for k < L holds the returns of "prefix k, then
EOS" ([n^k], empty when there is no EOS) and `level[L]` those of the full-length
sequences ([n^L]).

Policies are per-level log-probabilities `log_pi[k]`: [n^k, A].

The exact optimum of E[U] - beta KL(Tr(pi) || Tr(pi0)) is soft backward
induction (Theorem 4): W(leaf) = U, W(s) = beta log sum_a pi0(a|s) exp(W(sa)/beta),
pi*(a|s) = pi0(a|s) exp((W(sa) - W(s)) / beta).

Glossary: A vocabulary (actions), L depth, n non-EOS tokens, K sweep points.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.special import logsumexp

from goodhart_jax.conditioning import ThresholdResult
from goodhart_jax.tails import Family

__all__ = [
    "TreeSpec", "Tree", "TreeResult", "Policy", "Thm2Policy", "Thm2Result", "make_base_policy", "make_tree",
    "spec_of", "action_values", "soft_optimum", "optimal_policy", "policy_kl", "terminal_probs", "trajectory_stats",
    "thm2_policy", "thm2", "conditional_value", "terminal_values", "sweep_betas", "sweep_tree",
    "check_float32", "sweep_peak_bytes",
]

Levels = tuple  # tuple of L + 1 arrays, level k: [n^k] (k < L: EOS terminals), level L: [n^L]


@dataclasses.dataclass(frozen=True)
class TreeSpec:
    """Shape of a token tree (static).

    Attributes:
      vocab: A >= 2 tokens (including EOS when `eos`).
      depth: L >= 1, the maximum sequence length.
      eos: whether token A - 1 ends the sequence.
    """

    vocab: int
    depth: int
    eos: bool = False

    def __post_init__(self):
        if int(self.vocab) != self.vocab or self.vocab < 2:
            raise ValueError(f"vocab must be an integer >= 2, got {self.vocab}")
        if int(self.depth) != self.depth or self.depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {self.depth}")
        if self.eos and self.vocab < 3 and self.depth > 1:
            pass  # one non-EOS token: a chain with exits, still a valid tree

    @property
    def n(self) -> int:
        """Non-EOS tokens per state."""
        return self.vocab - 1 if self.eos else self.vocab

    def level_sizes(self) -> tuple[int, ...]:
        """Number of terminal states per level (k < L: EOS exits, L: full length)."""
        eos = [self.n**k if self.eos else 0 for k in range(self.depth)]
        return tuple(eos) + (self.n**self.depth,)

    @property
    def num_terminals(self) -> int:
        return sum(self.level_sizes())


class Tree(NamedTuple):
    """A tree instance: base policy and terminal returns (a pytree of arrays)."""

    log_pi0: tuple  # L arrays, [n^k, A]: base policy log-probabilities
    X: Levels  # error of each terminal state
    V: Levels  # utility of each terminal state


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


class Thm2Policy(NamedTuple):
    """The Theorem 2 construction on a tree."""

    pi: tuple  # L arrays [n^k, A]: the policy inducing rho_t
    log_rho: Levels  # rho_t's log-probabilities per level
    exists: Array  # [] bool: t > c > 0, some terminal has U > t and some U <= t


class Thm2Result(NamedTuple):
    """Expectations under the Theorem 2 policy (unpacks as `stats, exists`)."""

    stats: TreeResult  # E_U, E_V, KL, KL_per_state of the policy
    exists: Array  # bool: whether the construction is defined (see `Thm2Policy`)


def make_base_policy(key: Array, spec: TreeSpec, kind: str = "uniform", temperature: float = 1.0,
                     dtype=jnp.float32) -> tuple:
    """Base policy pi0: uniform, or softmax(N(0, 1) logits / temperature) per state.

    Returns:
      L arrays [n^k, A] of log-probabilities.
    """
    if kind not in ("uniform", "random"):
        raise ValueError(f"unknown base policy {kind!r}; valid: uniform, random")
    if kind == "random" and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    out = []
    keys = jax.random.split(key, spec.depth)
    for k in range(spec.depth):
        shape = (spec.n**k, spec.vocab)
        if kind == "uniform":
            out.append(jnp.full(shape, -jnp.log(spec.vocab), dtype))
        else:
            logits = jax.random.normal(keys[k], shape, dtype) / temperature
            out.append(jax.nn.log_softmax(logits, axis=-1))
    return tuple(out)


def make_tree(key: Array, spec: TreeSpec, error: Family, utility: Family, pi0: str = "uniform",
              temperature: float = 1.0, dependent: bool = False, dtype=jnp.float32) -> Tree:
    """Draw a tree: base policy and independent X ~ error, V ~ utility per terminal.

    With `dependent=True`, returns follow footnote 4 of the paper instead
    (V ~ N(0, 1); X | V ~ N(0, 4) when |V| <= 1, else X = 0), ignoring the
    families.
    """
    k_pi, k_x, k_v = jax.random.split(key, 3)
    sizes = spec.level_sizes()
    total = sum(sizes)
    if dependent:
        V = jax.random.normal(k_v, (total,), dtype)
        X = jnp.where(jnp.abs(V) <= 1.0, 2.0 * jax.random.normal(k_x, (total,), dtype), 0.0)
    else:
        X = error.sample(k_x, (total,), dtype)
        V = utility.sample(k_v, (total,), dtype)
    splits = np.cumsum(sizes)[:-1]
    return Tree(
        make_base_policy(k_pi, spec, pi0, temperature, dtype),
        tuple(jnp.split(X, splits)),
        tuple(jnp.split(V, splits)),
    )


def spec_of(tree: Tree) -> TreeSpec:
    """Recover the static shape of a tree from its arrays."""
    depth = len(tree.log_pi0)
    vocab = tree.log_pi0[0].shape[-1]
    leaves = tree.X[-1].shape[0]
    n = int(round(leaves ** (1.0 / depth)))
    if n**depth != leaves or n not in (vocab, vocab - 1):
        raise ValueError(f"inconsistent tree: {leaves} leaves at depth {depth} with vocab {vocab}")
    return TreeSpec(vocab, depth, eos=(n == vocab - 1))


def action_values(spec: TreeSpec, below: Array, exit_: Array) -> Array:
    """Per-state values of each action at depth k: the children's values, then EOS's if any.

    Args:
      spec: the tree's shape.
      below: [n^(k+1)] values of the depth-(k+1) internal states (or leaves).
      exit_: [n^k] values of "prefix, then EOS" (ignored without EOS; may be [0]).
    Returns:
      [n^k, A] values per state and action.
    """
    m = below.shape[0] // spec.n
    kids = below.reshape(m, spec.n)
    if spec.eos:
        kids = jnp.concatenate([kids, exit_[:, None]], axis=1)
    return kids


def terminal_values(tree: Tree) -> Levels:
    """U = X + V per level."""
    return tuple(x + v for x, v in zip(tree.X, tree.V))


def _backward(tree: Tree, policy_at) -> tuple[TreeResult, Array]:
    """One backward pass: the policy level by level, and its expectations.

    Expectations are accumulated bottom-up instead of by a forward pass over
    reach probabilities, so nothing of size [leaves] outlives its level:
      E_U(s) = sum_a pi(a|s) E_U(sa),  KL(s) = KL(pi(s)||pi0(s)) + sum_a pi(a|s) KL(sa),
      H(s) = E[1 / |T| | s],  G(s) = KL(pi(s)||pi0(s)) H(s) + sum_a pi(a|s) G(sa),
    where |T| is the number of actions of the trajectory; G(root) is the
    per-state KL E_T[(1/|T|) sum_{s in T} KL(pi(s)||pi0(s))].

    Args:
      policy_at: (k, W_kids [n^k, A]) -> (pi [n^k, A], KL(pi(s)||pi0(s)) [n^k],
        W [n^k]), where W is a value carried upward (the soft value, or unused).
    Returns:
      (result, W(root)).
    """
    spec = spec_of(tree)
    U = terminal_values(tree)
    dtype = U[-1].dtype
    W, EU, EV = U[-1], U[-1], tree.V[-1]
    KL = G = None  # zero on terminal states (None skips the arithmetic on the leaves)
    H = None  # 1/L on full-length leaves, so sum_a pi H = 1/L there
    for k in reversed(range(spec.depth)):
        m = spec.n**k
        kids = lambda below, exit_: action_values(spec, below, exit_)  # noqa: E731
        pi, kl, W = policy_at(k, kids(W, U[k]))
        avg = lambda below, exit_: jnp.sum(pi * kids(below, exit_), axis=1)  # noqa: E731
        exit_zero = jnp.zeros((m if spec.eos else 0,), dtype)
        EU, EV = avg(EU, U[k]), avg(EV, tree.V[k])
        exit_h = jnp.full((m if spec.eos else 0,), 1.0 / (k + 1), dtype)
        if H is None:
            H = avg(jnp.full((m * spec.n,), 1.0 / spec.depth, dtype), exit_h) if spec.eos else \
                jnp.full((m,), 1.0 / spec.depth, dtype)
        else:
            H = avg(H, exit_h)
        KL = kl if KL is None else kl + avg(KL, exit_zero)
        G = kl * H if G is None else kl * H + avg(G, exit_zero)
    return TreeResult(EU[0], EV[0], KL[0], G[0]), W[0]


def _soft_policy(tree: Tree, beta: Array, record: list | None = None):
    """policy_at for the KL-penalised optimum: softmax(log pi0 + W_kids / beta)."""

    def policy_at(k, w_kids):
        q = w_kids / beta  # [n^k, A]
        z = tree.log_pi0[k] + q
        m = jnp.max(z, axis=1, keepdims=True)
        e = jnp.exp(z - m)
        S = jnp.sum(e, axis=1, keepdims=True)
        logZ = m + jnp.log(S)  # [n^k, 1]
        pi = e / S
        if record is not None:
            record[k] = pi
        # log pi* - log pi0 = (z - m) - log S - log pi0: all O(KL) terms. The shorter sum_a pi* q - logZ
        # cancels two numbers of size U/beta (KL 0.0 for U ~ 1e18, beta = 1 in float32).
        kl = jnp.sum(jnp.where(pi > 0, pi * ((z - m) - tree.log_pi0[k]), 0.0), axis=1) - jnp.log(S[:, 0])
        return pi, kl, beta * logZ[:, 0]

    return policy_at


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
    _, W0 = _backward(tree, _soft_policy(tree, beta, pis))
    return Policy(tuple(pis), W0)


def soft_optimum(tree: Tree, beta: Array) -> TreeResult:
    """E_U, E_V and both KLs of the exact KL-penalised optimum pi*(beta)."""
    return _backward(tree, _soft_policy(tree, beta))[0]


def policy_kl(pi: tuple, log_pi0: tuple) -> tuple:
    """Per-state KL(pi(s) || pi0(s)): L arrays [n^k]."""
    return tuple(
        jnp.sum(jnp.where(p > 0, p * (jnp.log(jnp.where(p > 0, p, 1.0)) - l0), 0.0), axis=1)
        for p, l0 in zip(pi, log_pi0)
    )


def terminal_probs(tree: Tree, pi: tuple) -> Levels:
    """Tr(pi) on terminal states: the probability of each, per level."""
    spec = spec_of(tree)
    r = jnp.ones((1,), pi[0].dtype)
    out = []
    for k in range(spec.depth):
        p = r[:, None] * pi[k]
        out.append(p[:, -1] if spec.eos else jnp.zeros((0,), p.dtype))
        r = p[:, : spec.n].reshape(-1)
    return tuple(out) + (r,)


def trajectory_stats(tree: Tree, pi: tuple) -> TreeResult:
    """E_U, E_V, trajectory KL and per-state KL of any policy.

    The trajectory KL is the chain rule sum_s P_pi(reach s) KL(pi(s) || pi0(s));
    the per-state KL averages KL(pi(s) || pi0(s)) over the states of each
    trajectory (the paper's E_{s in T, T ~ Tr(pi)}), then over trajectories.

    Args:
      tree: the tree.
      pi: L arrays [n^k, A] of policy probabilities.
    """
    kl = policy_kl(pi, tree.log_pi0)
    return _backward(tree, lambda k, w: (pi[k], kl[k], jnp.zeros(pi[k].shape[:1], pi[k].dtype)))[0]


def _base_terminal_logprobs(tree: Tree) -> Levels:
    spec = spec_of(tree)
    log_r = jnp.zeros((1,), tree.X[-1].dtype)
    out = []
    for k in range(spec.depth):
        lp = log_r[:, None] + tree.log_pi0[k]
        out.append(lp[:, -1] if spec.eos else jnp.zeros((0,), lp.dtype))
        log_r = lp[:, : spec.n].reshape(-1)
    return tuple(out) + (log_r,)


def thm2_policy(tree: Tree, t: Array, c: Array) -> Thm2Policy:
    """The Theorem 2 construction: rho_t and the policy that induces it.

    rho_t(tau) = (1 - c/t) / F_Q(t) rho0(tau) if U(tau) <= t, else
    (c/t) / Fbar_Q(t) rho0(tau), with Q the law of U under pi0; the policy is
    pi(a|s) = rho_t(next token a | prefix s).

    Args:
      t: [] threshold, > c.
      c: [] > 0, the tail mass is c / t.
    Returns:
      `Thm2Policy` (pi, log_rho, exists): the policy (L arrays [n^k, A] of
      probabilities), rho_t's log-probabilities per level, and whether the
      construction is defined (t > c > 0 and some terminal has U > t and some U <= t).
    """
    spec = spec_of(tree)
    U = terminal_values(tree)
    lr0 = _base_terminal_logprobs(tree)
    flat_u = jnp.concatenate(U)
    flat_l = jnp.concatenate(lr0)
    above = flat_u > t
    log_F = logsumexp(jnp.where(above, -jnp.inf, flat_l))
    log_Fbar = logsumexp(jnp.where(above, flat_l, -jnp.inf))
    exists = (c > 0) & (t > c) & jnp.isfinite(log_F) & jnp.isfinite(log_Fbar)
    w_lo = jnp.log1p(-c / t) - log_F
    w_hi = jnp.log(c / t) - log_Fbar
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


def thm2(tree: Tree, t: Array, c: Array) -> Thm2Result:
    """`TreeResult` of the Theorem 2 policy and whether it is defined (unpacks as `stats, exists`)."""
    pi, _, exists = thm2_policy(tree, t, c)
    return Thm2Result(trajectory_stats(tree, pi), exists)


def conditional_value(tree: Tree, t: Array) -> ThresholdResult:
    """E[V | U >= t] under pi0, and log P(U >= t) (-inf where no terminal qualifies).

    Returns:
      `conditioning.ThresholdResult` (E_V, log_p) with [] fields.
    """
    lr0 = jnp.concatenate(_base_terminal_logprobs(tree))
    U = jnp.concatenate(terminal_values(tree))
    V = jnp.concatenate(tree.V)
    lw = jnp.where(U >= t, lr0, -jnp.inf)
    log_p = logsumexp(lw)
    w = jnp.exp(lw - jnp.where(jnp.isfinite(log_p), log_p, 0.0))
    return ThresholdResult(jnp.sum(w * V), log_p)


def sweep_betas(tree: Tree, betas: Array, mesh: jax.sharding.Mesh | None = None) -> TreeResult:
    """`soft_optimum` over a sweep of betas, one beta at a time (`lax.map`).

    `lax.map` rather than `vmap`: vmap would materialise K copies of every
    level (512 MB for 8^7 leaves x 64 betas) and run slower. With a `mesh`
    (one axis, any name) the betas are sharded over its devices and each
    device maps over its share; K must be divisible by the number of devices.

    Args:
      tree: the tree.
      betas: [K] > 0.
    Returns:
      `TreeResult` with [K] fields.
    """
    run = lambda tr, b: jax.lax.map(lambda x: soft_optimum(tr, x), b)  # noqa: E731
    if mesh is None:
        return run(tree, betas)
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    (axis,) = mesh.axis_names
    betas = jax.reshard(betas, NamedSharding(mesh, P(axis)))
    tree = jax.reshard(tree, NamedSharding(mesh, P()))
    return jax.shard_map(run, mesh=mesh, in_specs=(P(), P(axis)), out_specs=P(axis))(tree, betas)


sweep_tree = jax.jit(sweep_betas, static_argnames=("mesh",))
"""Jitted entry point: `sweep_tree(tree, betas [K], mesh=None) -> TreeResult` of [K].

New beta values (same K) reuse the compiled sweep.
"""


# Where a float32 sweep is checked (max 3.4e38, 7 digits): beta, loc/scale of each family, a random pi0's temperature.
BETA_RANGE, SCALE_RANGE, MIN_TEMPERATURE = (1e-30, 1e30), (1e-10, 1e3), 1e-6


def check_float32(betas, families, temperature: float | None = None) -> None:
    """Raise ValueError for inputs whose numbers a float32 tree sweep (and its tilt) cannot carry.

    Args:
      betas: the KL coefficients.
      families: the `tails.Family` objects of the run (their loc/scale are checked).
      temperature: a random pi0's temperature, or None for a uniform pi0.
    """
    lo, hi = BETA_RANGE
    for b in betas:
        if not lo <= b <= hi:
            raise ValueError(f"beta={b:g} is outside [{lo:g}, {hi:g}]: the sweep runs in float32 (max 3.4e38), "
                             f"where U/beta and beta KL must fit")
    if temperature is not None and not temperature >= MIN_TEMPERATURE:
        raise ValueError(f"--temperature {temperature:g} is below {MIN_TEMPERATURE:g}: pi0's float32 "
                         f"logits N(0,1)/temperature overflow the softmax (NaN at 1e-10)")
    lo, hi = SCALE_RANGE
    for fam in families:
        for k, v in fam.params.items():
            if k in ("loc", "scale") and float(v) != 0 and not lo <= abs(float(v)) <= hi:
                raise ValueError(f"{fam}: |{k}|={abs(float(v)):g} is outside [{lo:g}, {hi:g}], the range where "
                                 f"this float32 sweep is checked (the tilt's E[U] grows like scale^2/beta)")


def sweep_peak_bytes(spec: TreeSpec, seeds: int, num_thresholds: int) -> float:
    """Peak memory of sims/sweep_beta.py: all seeds' trees at once (vmap), Theorem 2 vmapped over its M thresholds,
    betas one at a time. Peak RSS on CPU (/usr/bin/time -f %M; 2^18..2^21 leaves, 1-4 seeds, M = 1, 11):
    80 + 24 M bytes per terminal per seed, plus 0.7 GB."""
    return spec.num_terminals * seeds * (100 + 24 * num_thresholds) + 3 * 2**28
