"""Drawing a tree: the base policy pi0 and the terminal returns X, V.

Every level is drawn in blocks of whole subtrees from `fold_in(key, block)` (`draw_depth`), so a seed gives the
same tree on any mesh; with a `mesh`, each device draws only the blocks it holds (`tree_sharding`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.sharding import PartitionSpec as P

from goodhart_jax.mdp.sharding import tree_specs
from goodhart_jax.mdp.tree import Tree, TreeSpec, draw_depth, level_axis
from goodhart_jax.tails import Family

__all__ = ["make_base_policy", "make_tree"]


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
        ax = level_axis(spec, k, axis)
        if ax is not None and rows[k]:
            size = rows[k] // jax.lax.axis_size(ax)
            out[k] = jax.lax.dynamic_slice_in_dim(out[k], jax.lax.axis_index(ax) * size, size)
    if deep:
        per = [r // n**c for r in deep]  # rows of each deep level in one subtree
        nb, first = n**c, 0
        if axis is not None and level_axis(spec, c, axis) is not None:
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

    Args:
      spec: the tree's `TreeSpec` (vocab, depth, eos).
      kind: "uniform" or "random".
      dtype: the float dtype (float32 or float64).
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
        ax = level_axis(spec, k, axis)
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

    Args:
      spec: the tree's `TreeSpec` (vocab, depth, eos).
      pi0: the base policy's kind, "uniform" or "random" (`make_base_policy`).
      temperature: temperature of a random pi0's logits.
      dtype: the float dtype (float32 or float64).
      leaf_axis: name of the mesh axis the leaves are split over.
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

