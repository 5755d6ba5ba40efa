"""Sweeps of the exact optimum over beta: one beta at a time, on one device or a mesh."""
from __future__ import annotations

import jax
from jax import Array
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from goodhart_jax.mdp.backward import TreeResult, soft_optimum_part
from goodhart_jax.mdp.sharding import tree_sharding, tree_specs
from goodhart_jax.mdp.tree import Tree, spec_of

__all__ = ["sweep_betas", "sweep_tree"]


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
        return jax.lax.map(lambda b: soft_optimum_part(tree, spec, b), betas)
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
    run = lambda tr, b: jax.lax.map(lambda x: soft_optimum_part(tr, spec, x, la), b)  # noqa: E731
    return jax.shard_map(run, mesh=mesh, in_specs=(tspecs, bspec), out_specs=bspec)(tree, betas)


sweep_tree = jax.jit(sweep_betas, static_argnames=("mesh", "leaf_axis", "beta_axis"))
"""Jitted entry point: `sweep_tree(tree, betas [K], mesh=None) -> TreeResult` of [K].

New beta values (same K) reuse the compiled sweep.
"""
