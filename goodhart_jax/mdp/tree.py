"""The token tree's shape and layout: `TreeSpec`, `Tree`, the levels, the draw blocks and the reach pass.

Layout: with n = A - 1 non-EOS tokens when `eos` else n = A, the internal states at depth k are the n^k non-EOS
prefixes, in row-major order: the children of state i at depth k are states i * n + a at depth k + 1. Terminal
returns are stored per level: `level[k]` for k < L holds the returns of "prefix k, then EOS" ([n^k], empty when
there is no EOS) and `level[L]` those of the full-length sequences ([n^L]).

Glossary: A vocabulary (actions), L depth, n non-EOS tokens.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

__all__ = [
    "Levels", "TreeSpec", "Tree", "spec_of", "action_values", "terminal_values", "terminal_probs",
    "terminal_logprobs", "DRAW_BLOCKS", "draw_depth", "split_level", "level_axis",
]

Levels = tuple  # tuple of L + 1 arrays, level k: [n^k] (k < L: EOS terminals), level L: [n^L]


@dataclasses.dataclass(frozen=True)
class TreeSpec:
    """Shape of a token tree (static).

    Attributes:
      vocab: A >= 2 tokens (including EOS when `eos`).
      depth: L >= 1, the maximum sequence length.
      eos: whether token A - 1 ends the sequence (with A = 2: a chain with exits).
    """

    vocab: int
    depth: int
    eos: bool = False

    def __post_init__(self):
        if int(self.vocab) != self.vocab or self.vocab < 2:
            raise ValueError(f"vocab must be an integer >= 2, got {self.vocab}")
        if int(self.depth) != self.depth or self.depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {self.depth}")

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
    """U = X + V per level.

    Args:
      tree: a `Tree` (`make_tree`).
    """
    return tuple(x + v for x, v in zip(tree.X, tree.V))


# ------------------------------------------------------------------ draw blocks and the split along the leaves

DRAW_BLOCKS = 64  # a level is drawn in at least this many blocks (fewer only when it has fewer rows)


def draw_depth(spec: TreeSpec) -> int:
    """c: level k is drawn in n^min(k, c) blocks, the subtrees at depth min(k, c); n^c >= `DRAW_BLOCKS`.

    The block count depends on the tree alone, never on the mesh, so a seed gives the same tree on any number
    of devices and processes, as long as each device holds whole blocks (`split_level`).

    Args:
      spec: the tree's `TreeSpec` (vocab, depth, eos).
    """
    if spec.n == 1:
        return spec.depth
    return min(spec.depth, max(1, math.ceil(math.log(DRAW_BLOCKS) / math.log(spec.n) - 1e-9)))


def split_level(spec: TreeSpec, shards: int) -> int:
    """s: the first level held in `shards` contiguous blocks of whole subtrees; levels < s are replicated.

    Every level k >= s splits evenly: its n^k states and its n^min(k, c) draw blocks (`draw_depth`) are
    multiples of `shards`, and device j's states at level k + 1 are the children of its states at level k.

    Args:
      spec: the tree's `TreeSpec` (vocab, depth, eos).
    Raises:
      ValueError: when no level splits (e.g. 3 tokens over 2 devices).
    """
    c = draw_depth(spec)
    for k in range(spec.depth + 1):
        if spec.n ** min(k, c) % shards == 0:
            return k
    raise ValueError(f"a tree of {spec.n}^{spec.depth} leaves cannot be split over {shards} devices: no level's "
                     f"{spec.n}^k states (drawn in {spec.n}^min(k, {c}) blocks) divide evenly")


def level_axis(spec: TreeSpec, k: int, axis: str | None) -> str | None:
    """The leaf axis if level k is split over it (inside `shard_map`), else None.

    Args:
      spec: the tree's `TreeSpec` (vocab, depth, eos).
    """
    return axis if axis is not None and k >= split_level(spec, jax.lax.axis_size(axis)) else None


# ------------------------------------------------------------------ the reach pass

def _reach(spec: TreeSpec, policy: tuple, start: Array, step, axis: str | None = None) -> Levels:
    """The probability (or log-probability) of reaching each terminal, level by level from the root.

    Args:
      spec: the tree's whole shape.
      policy: L arrays [n^k, A] (inside `shard_map`: this device's rows of the split levels).
      start: [1] the root's reach (1, or 0 in logs).
      step: (reach [m, 1], policy [m, A]) -> reach of each (state, action) [m, A]: a product, or a sum in logs.
      axis: the leaf axis inside `shard_map`, or None: from `split_level` on, this device's part is kept.
    Returns:
      L + 1 levels (k < L: the EOS exits, [0] without EOS; L: the leaves).
    """
    split = split_level(spec, jax.lax.axis_size(axis)) if axis is not None else -1
    r = start
    out = []
    for k in range(spec.depth + 1):
        if k == split:  # the first split level: keep this device's block
            size = r.shape[0] // jax.lax.axis_size(axis)
            r = jax.lax.dynamic_slice_in_dim(r, jax.lax.axis_index(axis) * size, size)
        if k == spec.depth:
            break
        p = step(r[:, None], policy[k])
        out.append(p[:, -1] if spec.eos else jnp.zeros((0,), p.dtype))
        r = p[:, : spec.n].reshape(-1)
    return tuple(out) + (r,)


def terminal_probs(tree: Tree, pi: tuple) -> Levels:
    """Tr(pi) on terminal states: the probability of each, per level.

    Args:
      tree: the tree (its shape).
      pi: L arrays [n^k, A] of policy probabilities.
    """
    return _reach(spec_of(tree), pi, jnp.ones((1,), pi[0].dtype), lambda r, p: r * p)


def terminal_logprobs(spec: TreeSpec, log_pi: tuple, axis: str | None = None, dtype=None) -> Levels:
    """log Tr(pi) on terminal states, per level, from per-level log-probabilities.

    Args:
      spec: the tree's whole shape.
      log_pi: L arrays [n^k, A] of log-probabilities (e.g. `Tree.log_pi0`).
      axis: inside `shard_map`, the leaf axis: the split levels are this device's part.
      dtype: the root's log-reach dtype (default: log_pi's).
    """
    start = jnp.zeros((1,), log_pi[0].dtype if dtype is None else dtype)
    return _reach(spec, log_pi, start, lambda r, lp: r + lp, axis)
