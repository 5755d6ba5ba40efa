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

Every level is drawn in blocks of whole subtrees from `fold_in(key, block)` (`draw_depth`), so a seed gives
the same tree on any mesh; with a `mesh`, a tree lives split along its leaves over the devices of one axis
(`split_level`, `tree_sharding`): every level with at least as many states as devices stays split, the few
levels above are gathered and finished on every device.

Glossary: A vocabulary (actions), L depth, n non-EOS tokens, K sweep points.
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
from jax.scipy.special import logsumexp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from goodhart_jax.conditioning import ThresholdResult
from goodhart_jax.tails import Family

__all__ = [
    "TreeSpec", "Tree", "TreeResult", "Policy", "Thm2Policy", "Thm2Result", "make_base_policy", "make_tree",
    "spec_of", "action_values", "soft_optimum", "optimal_policy", "policy_kl", "terminal_probs", "trajectory_stats",
    "thm2_policy", "thm2", "conditional_value", "terminal_values", "sweep_betas", "sweep_tree",
    "draw_depth", "split_level", "tree_specs", "tree_sharding",
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


DRAW_BLOCKS = 64  # a level is drawn in at least this many blocks (fewer only when it has fewer rows)


def draw_depth(spec: TreeSpec) -> int:
    """c: level k is drawn in n^min(k, c) blocks, the subtrees at depth min(k, c); n^c >= `DRAW_BLOCKS`.

    The block count depends on the tree alone, never on the mesh, so a seed gives the same tree on any number
    of devices and processes, as long as each device holds whole blocks (`split_level`).
    """
    if spec.n == 1:
        return spec.depth
    return min(spec.depth, max(1, math.ceil(math.log(DRAW_BLOCKS) / math.log(spec.n) - 1e-9)))


def _draw_levels(key: Array, spec: TreeSpec, present: list, width: tuple, draw, dtype,
                 axis: str | None = None) -> list:
    """Rows of levels k = 0, 1, ... ([n^k, *width] where present[k], else [0, *width]), in two draws.

    The levels above c = `draw_depth` come from one draw with `fold_in(key, 0)`; below, subtree j at depth c
    brings its rows of every level from one draw with `fold_in(fold_in(key, 1), j)`. Inside `shard_map` with
    the leaf `axis`, a device draws only its own subtrees, and keeps its rows of the split levels.
    """
    c, n = draw_depth(spec), spec.n
    rows = [n**k if p else 0 for k, p in enumerate(present)]
    top, deep = rows[:c], rows[c:]
    out = []
    if sum(top):
        flat = draw(jax.random.fold_in(key, 0), (sum(top), *width))
        out += jnp.split(flat, np.cumsum(top)[:-1].tolist())
    else:
        out += [jnp.zeros((0, *width), dtype) for _ in top]
    for k in range(len(top)):
        ax = _level_axis(spec, k, axis)
        if ax is not None and rows[k]:
            size = rows[k] // jax.lax.axis_size(ax)
            out[k] = jax.lax.dynamic_slice_in_dim(out[k], jax.lax.axis_index(ax) * size, size)
    if deep:
        per = [r // n**c for r in deep]  # rows of each deep level in one subtree
        nb, first = n**c, 0
        if axis is not None and _level_axis(spec, c, axis) is not None:
            nb = n**c // jax.lax.axis_size(axis)
            first = jax.lax.axis_index(axis) * nb
        blocks = jax.vmap(lambda j: draw(jax.random.fold_in(jax.random.fold_in(key, 1), j), (sum(per), *width)))(
            first + jnp.arange(nb))  # [nb, rows of one subtree, *width]
        for part in jnp.split(blocks, np.cumsum(per)[:-1].tolist(), axis=1):
            out.append(part.reshape(-1, *width))
    return out


def make_base_policy(key: Array, spec: TreeSpec, kind: str = "uniform", temperature: float = 1.0,
                     dtype=jnp.float32, *, axis: str | None = None) -> tuple:
    """Base policy pi0: uniform, or softmax(N(0, 1) logits / temperature) per state.

    Random logits are drawn in blocks (see `draw_depth`), so the same key gives the same pi0 on any mesh.

    Returns:
      L arrays [n^k, A] of log-probabilities (inside `shard_map` with the leaf `axis`: this device's rows of
      the levels `split_level` shards).
    """
    _check_base_policy(kind, temperature)
    return _base_policy(key, spec, kind, temperature, dtype, axis)


def _check_base_policy(kind: str, temperature) -> None:
    if kind not in ("uniform", "random"):
        raise ValueError(f"unknown base policy {kind!r}; valid: uniform, random")
    if kind == "random" and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _base_policy(key, spec, kind, temperature, dtype, axis) -> tuple:
    if kind == "random":
        draw = lambda kk, shape: jax.nn.log_softmax(jax.random.normal(kk, shape, dtype) / temperature, axis=-1)  # noqa: E731
        return tuple(_draw_levels(key, spec, [True] * spec.depth, (spec.vocab,), draw, dtype, axis))
    out = []
    for k in range(spec.depth):
        ax = _level_axis(spec, k, axis)
        rows = spec.n**k // (jax.lax.axis_size(ax) if ax else 1)
        out.append(jnp.full((rows, spec.vocab), -jnp.log(spec.vocab), dtype))
    return tuple(out)


def make_tree(key: Array, spec: TreeSpec, error: Family, utility: Family, pi0: str = "uniform",
              temperature: float = 1.0, dependent: bool = False, dtype=jnp.float32,
              mesh: jax.sharding.Mesh | None = None, leaf_axis: str = "leaf") -> Tree:
    """Draw a tree: base policy and independent X ~ error, V ~ utility per terminal.

    With `dependent=True`, returns follow footnote 4 of the paper instead
    (V ~ N(0, 1); X | V ~ N(0, 4) when |V| <= 1, else X = 0), ignoring the
    families.

    Every level is drawn in blocks of whole subtrees, block j from `fold_in(key, j)` (`draw_depth`). With a
    `mesh`, each device draws only its own blocks of the levels it holds (`tree_sharding`): nothing of size
    [leaves] passes through the host, and the tree is the same as without a mesh.
    """
    _check_base_policy(pi0, temperature)
    if mesh is not None:
        return _tree_program(spec, pi0, dependent, dtype, mesh, leaf_axis)(key, error, utility, temperature)
    return _make_tree(key, spec, error, utility, pi0, temperature, dependent, dtype, None)


@functools.lru_cache(maxsize=64)
def _tree_program(spec, pi0, dependent, dtype, mesh, leaf_axis):
    """`make_tree` on a mesh, compiled once per (shape, settings, mesh): each device draws its own blocks."""
    draw = lambda k, e, u, temp: _make_tree(k, spec, e, u, pi0, temp, dependent, dtype, leaf_axis)  # noqa: E731
    return jax.jit(jax.shard_map(draw, mesh=mesh, in_specs=P(), out_specs=tree_specs(spec, mesh.shape[leaf_axis],
                                                                                         leaf_axis)))


@functools.partial(jax.jit, static_argnums=(1, 4, 6, 7, 8))
def _make_tree(key, spec, error, utility, pi0, temperature, dependent, dtype, axis) -> Tree:
    k_pi, k_x, k_v = jax.random.split(key, 3)
    present = [size > 0 for size in spec.level_sizes()]
    levels = lambda kk, draw: _draw_levels(kk, spec, present, (), draw, dtype, axis)  # noqa: E731
    if dependent:
        V = levels(k_v, lambda kk, sh: jax.random.normal(kk, sh, dtype))
        X = [jnp.where(jnp.abs(v) <= 1.0, x, 0.0).astype(dtype)
             for x, v in zip(levels(k_x, lambda kk, sh: 2.0 * jax.random.normal(kk, sh, dtype)), V)]
    else:
        X = levels(k_x, lambda kk, sh: error.sample(kk, sh, dtype))
        V = levels(k_v, lambda kk, sh: utility.sample(kk, sh, dtype))
    return Tree(_base_policy(k_pi, spec, pi0, temperature, dtype, axis), tuple(X), tuple(V))


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


# ------------------------------------------------------------------ trees split over devices along the leaves

def split_level(spec: TreeSpec, shards: int) -> int:
    """s: the first level held in `shards` contiguous blocks of whole subtrees; levels < s are replicated.

    Every level k >= s splits evenly: its n^k states and its n^min(k, c) draw blocks (`draw_depth`) are
    multiples of `shards`, and device j's states at level k + 1 are the children of its states at level k.

    Raises:
      ValueError: when no level splits (e.g. 3 tokens over 2 devices).
    """
    c = draw_depth(spec)
    for k in range(spec.depth + 1):
        if spec.n ** min(k, c) % shards == 0:
            return k
    raise ValueError(f"a tree of {spec.n}^{spec.depth} leaves cannot be split over {shards} devices: no level's "
                     f"{spec.n}^k states (drawn in {spec.n}^min(k, {c}) blocks) divide evenly")


def _level_axis(spec: TreeSpec, k: int, axis: str | None) -> str | None:
    """The leaf axis if level k is split over it (inside `shard_map`), else None."""
    return axis if axis is not None and k >= split_level(spec, jax.lax.axis_size(axis)) else None


def tree_specs(spec: TreeSpec, shards: int, leaf_axis: str = "leaf") -> Tree:
    """A `Tree` of PartitionSpecs: levels from `split_level` on split along `leaf_axis`, the rest replicated."""
    s = split_level(spec, shards)
    sizes = spec.level_sizes()
    return Tree(tuple(P(leaf_axis, None) if k >= s else P() for k in range(spec.depth)),
                *[tuple(P(leaf_axis) if k >= s and sizes[k] else P() for k in range(spec.depth + 1))] * 2)


def tree_sharding(spec: TreeSpec, mesh: jax.sharding.Mesh, leaf_axis: str = "leaf") -> Tree:
    """A `Tree` of NamedShardings on `mesh` (see `tree_specs`); e.g. `jax.device_put(tree, tree_sharding(...))`."""
    return jax.tree.map(lambda p: NamedSharding(mesh, p), tree_specs(spec, mesh.shape[leaf_axis], leaf_axis),
                        is_leaf=lambda x: isinstance(x, P))


def _gather(x, axis):
    """The whole of a level split over `axis` (every device gets all of it)."""
    return jax.lax.all_gather(x, axis, tiled=True, to="invarying")


def _psum_logsumexp(local: Array, axis: str | None) -> Array:
    """log sum exp over the devices of `axis` of per-device log-sums."""
    if axis is None:
        return local
    mx = jax.lax.pmax(local, axis)
    mx = jnp.where(jnp.isfinite(mx), mx, 0.0)
    return mx + jnp.log(jax.lax.psum(jnp.exp(local - mx), axis))


def _on_mesh(fn, spec: TreeSpec, mesh, leaf_axis: str, tree: Tree, *args):
    """fn(tree, spec, *args, axis) on a tree split over `leaf_axis` of `mesh`; args and results replicated.

    One jitted program per (fn, spec, mesh, axis), kept: an eager `shard_map` compiles every operation on its own
    (10 s for one soft optimum of a 16-leaf tree on 8 CPU devices, against 0.8 s jitted).
    """
    return _mesh_program(fn, spec, mesh, leaf_axis, len(args))(tree, *args)


@functools.lru_cache(maxsize=64)
def _mesh_program(fn, spec: TreeSpec, mesh, leaf_axis: str, nargs: int):
    specs, shardings = tree_specs(spec, mesh.shape[leaf_axis], leaf_axis), tree_sharding(spec, mesh, leaf_axis)
    f = jax.shard_map(lambda tr, *a: fn(tr, spec, *a, axis=leaf_axis), mesh=mesh,
                      in_specs=(specs,) + (P(),) * nargs, out_specs=P())
    return jax.jit(lambda tree, *args: f(jax.reshard(tree, shardings), *args))


# ------------------------------------------------------------------ the backward pass

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


def _backward(tree: Tree, spec: TreeSpec, weights_at, scale, reward=None, axis: str | None = None,
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
            c = jax.tree.map(lambda x: _gather(x, axis), c)
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


def _soft_weights(tree: Tree, beta: Array):
    """weights_at for the KL-penalised optimum: pi = softmax(log pi0 + W_kids / beta)."""

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
    _, W0 = _backward(tree, spec_of(tree), _soft_weights(tree, beta), beta, record=pis)
    return Policy(tuple(pis), W0)


def _soft_optimum(tree: Tree, spec: TreeSpec, beta: Array, axis: str | None = None) -> TreeResult:
    return _backward(tree, spec, _soft_weights(tree, beta), beta, axis=axis)[0]


def soft_optimum(tree: Tree, beta: Array, mesh: jax.sharding.Mesh | None = None,
                 leaf_axis: str = "leaf") -> TreeResult:
    """E_U, E_V and both KLs of the exact KL-penalised optimum pi*(beta) (one fused backward pass).

    With a `mesh`, the tree is split along its leaves over `leaf_axis` (`tree_sharding`); the result is the same.
    """
    if mesh is not None:
        return _on_mesh(_soft_optimum, spec_of(tree), mesh, leaf_axis, tree, beta)
    return _soft_optimum(tree, spec_of(tree), beta)


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
    def weights_at(k, _):
        p = pi[k]
        return p, jnp.log(jnp.where(p > 0, p, 1.0)) - tree.log_pi0[k], jnp.zeros(p.shape[:1], p.dtype)

    return _backward(tree, spec_of(tree), weights_at, 0.0)[0]


def _base_logprobs(tree: Tree, spec: TreeSpec, axis: str | None = None) -> Levels:
    """log Tr(pi0) of each terminal, per level (inside `shard_map`: this device's part of the split levels)."""
    split = split_level(spec, jax.lax.axis_size(axis)) if axis is not None else -1
    log_r = jnp.zeros((1,), tree.X[-1].dtype)
    out = []
    for k in range(spec.depth + 1):
        if k == split:  # the first split level: keep this device's block
            size = log_r.shape[0] // jax.lax.axis_size(axis)
            log_r = jax.lax.dynamic_slice_in_dim(log_r, jax.lax.axis_index(axis) * size, size)
        if k == spec.depth:
            break
        lp = log_r[:, None] + tree.log_pi0[k]
        out.append(lp[:, -1] if spec.eos else jnp.zeros((0,), lp.dtype))
        log_r = lp[:, : spec.n].reshape(-1)
    return tuple(out) + (log_r,)


def _logsumexp_levels(parts: Levels, spec: TreeSpec, axis: str | None) -> Array:
    """log sum exp over every terminal of all levels (the split ones summed over the devices of `axis`)."""
    split = split_level(spec, jax.lax.axis_size(axis)) if axis is not None else 0
    lse = lambda xs: logsumexp(jnp.stack([logsumexp(x) if x.size else -jnp.inf for x in xs]))  # noqa: E731
    whole = _psum_logsumexp(lse(parts[split:]), axis)
    return jnp.logaddexp(whole, lse(parts[:split])) if split else whole


def _sum_levels(parts: Levels, spec: TreeSpec, axis: str | None) -> Array:
    """sum over every terminal of all levels (the split ones summed over the devices of `axis`)."""
    split = split_level(spec, jax.lax.axis_size(axis)) if axis is not None else 0
    whole = sum(jnp.sum(x) for x in parts[split:])
    whole = jax.lax.psum(whole, axis) if axis is not None else whole
    return whole + sum((jnp.sum(x) for x in parts[:split]), jnp.zeros((), whole.dtype))


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
    log_F = _logsumexp_levels(tuple(jnp.where(u > t, -jnp.inf, l) for l, u in zip(lr0, U)), spec, axis)
    log_Fbar = _logsumexp_levels(tuple(jnp.where(u > t, l, -jnp.inf) for l, u in zip(lr0, U)), spec, axis)
    exists = (c > 0) & (t > c) & jnp.isfinite(log_F) & jnp.isfinite(log_Fbar)
    return exists, jnp.log1p(-c / t) - log_F, jnp.log(c / t) - log_Fbar


def _thm2(tree: Tree, spec: TreeSpec, t: Array, c: Array, axis: str | None = None) -> Thm2Result:
    exists, w_lo, w_hi = _thm2_weights(tree, spec, t, c, _base_logprobs(tree, spec, axis), axis)
    # rho_t = rho0 exp(r) with r = log(rho_t / rho0) is the soft optimum at beta = 1 for reward r: one fused pass.
    ok = lambda w: jnp.where(exists, w, 0.0)  # noqa: E731  (an undefined construction: finite numbers, flagged)
    reward = lambda u: jnp.where(u > t, ok(w_hi), ok(w_lo))  # noqa: E731
    one = jnp.ones((), tree.X[-1].dtype)
    return Thm2Result(_backward(tree, spec, _soft_weights(tree, one), one, reward, axis)[0], exists)


def thm2(tree: Tree, t: Array, c: Array, mesh: jax.sharding.Mesh | None = None,
         leaf_axis: str = "leaf") -> Thm2Result:
    """`TreeResult` of the Theorem 2 policy and whether it is defined (unpacks as `stats, exists`).

    rho_t = rho0 exp(r) with r = log(rho_t / rho0) is the soft optimum at beta = 1 for the reward r (the
    normaliser is 1), so one fused backward pass gives its expectations. With a `mesh`, the tree is split
    along its leaves over `leaf_axis`.
    """
    if mesh is not None:
        return _on_mesh(_thm2, spec_of(tree), mesh, leaf_axis, tree, t, c)
    return _thm2(tree, spec_of(tree), t, c)


def _conditional_value(tree: Tree, spec: TreeSpec, t: Array, axis: str | None = None) -> ThresholdResult:
    lr0 = _base_logprobs(tree, spec, axis)
    U = terminal_values(tree)
    lw = tuple(jnp.where(u >= t, l, -jnp.inf) for l, u in zip(lr0, U))
    log_p = _logsumexp_levels(lw, spec, axis)
    shift = jnp.where(jnp.isfinite(log_p), log_p, 0.0)
    return ThresholdResult(_sum_levels(tuple(jnp.exp(w - shift) * v for w, v in zip(lw, tree.V)), spec, axis),
                           log_p)


def conditional_value(tree: Tree, t: Array, mesh: jax.sharding.Mesh | None = None,
                      leaf_axis: str = "leaf") -> ThresholdResult:
    """E[V | U >= t] under pi0, and log P(U >= t) (-inf where no terminal qualifies).

    Returns:
      `conditioning.ThresholdResult` (E_V, log_p) with [] fields.
    """
    if mesh is not None:
        return _on_mesh(_conditional_value, spec_of(tree), mesh, leaf_axis, tree, t)
    return _conditional_value(tree, spec_of(tree), t)


def sweep_betas(tree: Tree, betas: Array, mesh: jax.sharding.Mesh | None = None, *, leaf_axis: str = "leaf",
                beta_axis: str = "beta") -> TreeResult:
    """`soft_optimum` over a sweep of betas, one beta at a time (`lax.map`): memory O(leaves), not O(K leaves).

    `lax.map` rather than `vmap`: vmap would materialise K copies of every
    level (512 MB for 8^7 leaves x 64 betas) and run slower. With a `mesh`:
    its axis `beta_axis` shards the betas (K must be divisible by its size), its
    axis `leaf_axis` splits the tree along its leaves (`tree_sharding`); either
    or both (a 2-D mesh). A mesh of one axis with neither name shards the betas.

    Args:
      tree: the tree.
      betas: [K] > 0.
    Returns:
      `TreeResult` with [K] fields.
    """
    spec = spec_of(tree)
    if mesh is None:
        return jax.lax.map(lambda b: _soft_optimum(tree, spec, b), betas)
    names = mesh.axis_names
    la = leaf_axis if leaf_axis in names else None
    ba = beta_axis if beta_axis in names else (names[0] if len(names) == 1 and la is None else None)
    bspec = P(ba) if ba is not None else P()
    if la is not None:
        tspecs = tree_specs(spec, mesh.shape[la], la)
        tree = jax.reshard(tree, tree_sharding(spec, mesh, la))
    else:
        tspecs = jax.tree.map(lambda _: P(), tree)
        tree = jax.reshard(tree, NamedSharding(mesh, P()))
    betas = jax.reshard(betas, NamedSharding(mesh, bspec))
    run = lambda tr, b: jax.lax.map(lambda x: _soft_optimum(tr, spec, x, la), b)  # noqa: E731
    return jax.shard_map(run, mesh=mesh, in_specs=(tspecs, bspec), out_specs=bspec)(tree, betas)


sweep_tree = jax.jit(sweep_betas, static_argnames=("mesh", "leaf_axis", "beta_axis"))
"""Jitted entry point: `sweep_tree(tree, betas [K], mesh=None) -> TreeResult` of [K].

New beta values (same K) reuse the compiled sweep.
"""
