"""Run planning for the tree drivers (`sims/sweep_beta.py`, `sims/overoptimization.py`): which inputs a float32
sweep carries, how a seed's study spreads over the devices, and the memory it needs.

The library never imports this module: it serves the drivers, which map its parameter names to their flags.
"""
from __future__ import annotations

import jax

from goodhart_jax.mdp import TreeSpec, make_tree, split_level, sweep_betas, thm2

__all__ = [
    "BETA_RANGE", "SCALE_RANGE", "MIN_TEMPERATURE", "check_float32", "leaf_shards", "sweep_meshes", "sweep_layout",
    "seed_sweep", "sweep_peak_bytes",
]

# Where a float32 sweep is checked (max 3.4e38, 7 digits): beta, loc/scale of each family, a random pi0's temperature.
BETA_RANGE, SCALE_RANGE, MIN_TEMPERATURE = (1e-30, 1e30), (1e-10, 1e3), 1e-6


def check_float32(betas, families, temperature: float | None = None, *, temperature_name: str = "temperature"
                  ) -> None:
    """Raise ValueError for inputs whose numbers a float32 tree sweep (and its tilt) cannot carry.

    Args:
      betas: the KL coefficients.
      families: the `tails.Family` objects of the run (their loc/scale are checked).
      temperature: a random pi0's temperature, or None for a uniform pi0.
      temperature_name: what the message calls the temperature (a driver passes its flag).
    """
    lo, hi = BETA_RANGE
    for b in betas:
        if not lo <= b <= hi:
            raise ValueError(f"beta={b:g} is outside [{lo:g}, {hi:g}]: the sweep runs in float32 (max 3.4e38), "
                             f"where U/beta and beta KL must fit")
    if temperature is not None and not temperature >= MIN_TEMPERATURE:
        raise ValueError(f"{temperature_name} {temperature:g} is below {MIN_TEMPERATURE:g}: pi0's float32 "
                         f"logits N(0,1)/temperature overflow the softmax (NaN at 1e-10)")
    lo, hi = SCALE_RANGE
    for fam in families:
        for k, v in fam.params.items():
            if k in ("loc", "scale") and float(v) != 0 and not lo <= abs(float(v)) <= hi:
                raise ValueError(f"{fam}: |{k}|={abs(float(v)):g} is outside [{lo:g}, {hi:g}], the range where "
                                 f"this float32 sweep is checked (the tilt's E[U] grows like scale^2/beta)")


def leaf_shards(spec: TreeSpec, devices: int) -> int:
    """How many devices a tree's leaves are split over: all `devices` where the tree splits evenly, else 1.

    Args:
      spec: the tree's `TreeSpec` (vocab, depth, eos).
    """
    try:
        split_level(spec, devices)
        return devices
    except ValueError:
        return 1


def sweep_meshes(spec: TreeSpec, num_betas: int):
    """(leaf mesh or None, sweep mesh or None) over every device (of every process): the leaves split over all of
    them where the tree splits evenly (`split_level`), else the betas sharded where K divides evenly.

    Args:
      spec: the tree's `TreeSpec` (vocab, depth, eos).
      num_betas: K, the number of betas.
    """
    d = jax.device_count()
    if d == 1:
        return None, None
    if leaf_shards(spec, d) == d:
        leaf = jax.make_mesh((d,), ("leaf",))
        return leaf, leaf
    return None, (jax.make_mesh((d,), ("beta",)) if num_betas % d == 0 else None)


def sweep_layout(spec: TreeSpec, num_betas: int) -> str:
    """How `seed_sweep` spreads one seed's study over the devices (`sweep_meshes`), in words ("" on one device).

    Args:
      spec: the tree's `TreeSpec` (vocab, depth, eos).
      num_betas: K, the number of betas.
    """
    d = jax.device_count()
    leaf, mesh = sweep_meshes(spec, num_betas)
    if leaf is not None:
        return f"each tree split along its leaves over {d} devices"
    if mesh is not None:
        return f"the betas sharded over {d} devices, each holding the whole tree (it does not split evenly over {d})"
    if d == 1:
        return ""
    return (f"one device a process, each computing everything (neither the tree nor the {num_betas} betas split "
            f"evenly over {d} devices)")


def seed_sweep(spec: TreeSpec, pi0: str = "uniform", temperature: float = 1.0, num_betas: int = 1):
    """A jitted study of one seed's tree, drawn where it lives: `f(seed, error, utility, betas [K], ts [M], c) ->
    (sweep TreeResult [K], Thm2Result [M])`.

    The tree is split along its leaves over every device (of every process) where it splits evenly, else the betas
    are sharded (`sweep_meshes`); betas and thresholds run one at a time (`lax.map`): memory O(leaves / devices).
    Inputs are host values (NumPy), the same on every process.

    Args:
      spec: the tree's `TreeSpec` (vocab, depth, eos).
      pi0: the base policy's kind, "uniform" or "random".
      temperature: temperature of a random pi0.
      num_betas: K, the number of betas (static).
    """
    leaf, mesh = sweep_meshes(spec, num_betas)

    @jax.jit
    def one_seed(seed, error, utility, betas, ts, c):
        tree = make_tree(jax.random.key(seed), spec, error, utility, pi0=pi0, temperature=temperature, mesh=leaf)
        return sweep_betas(tree, betas, mesh=mesh), jax.lax.map(lambda t: thm2(tree, t, c, mesh=leaf), ts)

    return one_seed


def sweep_peak_bytes(spec: TreeSpec, shards: int = 1) -> float:
    """Peak memory a device needs for `seed_sweep`'s float32 study: one seed's tree at a time, its leaves split
    over `shards` devices, betas and Theorem 2 thresholds one at a time (`lax.map`): 40 bytes a terminal plus
    0.5 GiB.

    Args:
      spec: the tree's `TreeSpec` (vocab, depth, eos).
    """
    # Peak resident memory on CPU (X ~ Student-t(3), one seed): 39.7 bytes a terminal plus 0.47 GiB, rounded up.
    return spec.num_terminals / shards * 40 + 2**29
