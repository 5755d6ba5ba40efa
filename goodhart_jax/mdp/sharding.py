"""Trees split over devices along their leaves: PartitionSpecs, collectives over the leaf axis, mesh programs.

With a `mesh`, a tree lives split along its leaves over the devices of one axis (`split_level`,
`tree_sharding`): every level with at least as many states as devices stays split, the few levels above are
gathered and finished on every device.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.special import logsumexp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from goodhart_jax.mdp.tree import Levels, Tree, TreeSpec, split_level

__all__ = ["tree_specs", "tree_sharding", "gather", "psum_logsumexp", "logsumexp_levels", "sum_levels", "on_mesh"]


def tree_specs(spec: TreeSpec, shards: int, leaf_axis: str = "leaf") -> Tree:
    """A `Tree` of PartitionSpecs: levels from `split_level` on split along `leaf_axis`, the rest replicated.

    Args:
      spec: the tree's `TreeSpec` (vocab, depth, eos).
      shards: the number of devices along `leaf_axis`.
    """
    s = split_level(spec, shards)
    sizes = spec.level_sizes()
    return Tree(tuple(P(leaf_axis, None) if k >= s else P() for k in range(spec.depth)),
                *[tuple(P(leaf_axis) if k >= s and sizes[k] else P() for k in range(spec.depth + 1))] * 2)


def tree_sharding(spec: TreeSpec, mesh: jax.sharding.Mesh, leaf_axis: str = "leaf") -> Tree:
    """A `Tree` of NamedShardings on `mesh` (see `tree_specs`); e.g. `jax.device_put(tree, tree_sharding(...))`.

    Args:
      spec: the tree's `TreeSpec` (vocab, depth, eos).
      leaf_axis: name of the mesh axis the leaves are split over.
    """
    return jax.tree.map(lambda p: NamedSharding(mesh, p), tree_specs(spec, mesh.shape[leaf_axis], leaf_axis),
                        is_leaf=lambda x: isinstance(x, P))


def gather(x, axis):
    """The whole of a level split over `axis` (every device gets all of it).

    Args:
      x: this device's part of a level.
    """
    return jax.lax.all_gather(x, axis, tiled=True, to="invarying")


def psum_logsumexp(local: Array, axis: str | None) -> Array:
    """log sum exp over the devices of `axis` of per-device log-sums.

    Args:
      local: this device's log-sum.
    """
    if axis is None:
        return local
    mx = jax.lax.pmax(local, axis)
    mx = jnp.where(jnp.isfinite(mx), mx, 0.0)
    return mx + jnp.log(jax.lax.psum(jnp.exp(local - mx), axis))


def logsumexp_levels(parts: Levels, spec: TreeSpec, axis: str | None) -> Array:
    """log sum exp over every terminal of all levels (the split ones summed over the devices of `axis`).

    Args:
      parts: per level, this device's log-sums over its terminals.
      spec: the tree's `TreeSpec` (vocab, depth, eos).
    """
    split = split_level(spec, jax.lax.axis_size(axis)) if axis is not None else 0
    lse = lambda xs: logsumexp(jnp.stack([logsumexp(x) if x.size else -jnp.inf for x in xs]))  # noqa: E731
    whole = psum_logsumexp(lse(parts[split:]), axis)
    return jnp.logaddexp(whole, lse(parts[:split])) if split else whole


def sum_levels(parts: Levels, spec: TreeSpec, axis: str | None) -> Array:
    """sum over every terminal of all levels (the split ones summed over the devices of `axis`).

    Args:
      parts: per level, this device's sums over its terminals.
      spec: the tree's `TreeSpec` (vocab, depth, eos).
    """
    split = split_level(spec, jax.lax.axis_size(axis)) if axis is not None else 0
    whole = sum(jnp.sum(x) for x in parts[split:])
    whole = jax.lax.psum(whole, axis) if axis is not None else whole
    return whole + sum((jnp.sum(x) for x in parts[:split]), jnp.zeros((), whole.dtype))


def on_mesh(fn, spec: TreeSpec, mesh, leaf_axis: str, tree: Tree, *args):
    """fn(tree, spec, *args, axis) on a tree split over `leaf_axis` of `mesh`; args and results replicated.

    One jitted program per (fn, spec, mesh, axis), kept: an eager `shard_map` would compile every operation on
    its own.
    """
    return _mesh_program(fn, spec, mesh, leaf_axis, len(args))(tree, *args)


@functools.lru_cache(maxsize=64)
def _mesh_program(fn, spec: TreeSpec, mesh, leaf_axis: str, nargs: int):
    specs, shardings = tree_specs(spec, mesh.shape[leaf_axis], leaf_axis), tree_sharding(spec, mesh, leaf_axis)
    f = jax.shard_map(lambda tr, *a: fn(tr, spec, *a, axis=leaf_axis), mesh=mesh,
                      in_specs=(specs,) + (P(),) * nargs, out_specs=P())
    return jax.jit(lambda tree, *args: f(jax.reshard(tree, shardings), *args))
