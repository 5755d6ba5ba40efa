"""The reward-model scaling study's units (sims/rm_scaling.py): one seed's pi0, gold and annotator error; one proxy
size's members trained on nested data, each measured and written as rows.

A unit is (seed, size index): `seed_base` builds what every size of a seed shares, `one_size` trains and measures
one size's proxies (one a data size: `scaling.train_members`, `scaling.evaluate`), and `make_unit` strings them
together over the run's units (`distributed.run_units` shares them over processes). Keys are folded from the seed
alone, so a unit's rows are the same whichever process runs it.

The study's settings come in one object, `cfg`, read by field (sims/rm_scaling.py's `Config`, a
`cli.lab_flags.LabRLConfig` subclass, or any object with the fields): vocab, depth, lm_steps, sharpness,
eos_bias (pi0); noise, noise_scale, error_map (the annotator error); betas, ns, rl_betas, rl_steps,
eval_every (the methods); pairs, bt_steps, lr, stop ("val" or "steps"), val_frac, val_every, pretrain (the
proxies). A value this module cannot use raises ValueError naming those fields (a driver reads them as its flags:
`cli.inputs`).

Public API:
  annotator_error(cfg, key, n, tree=None) -> eps [N]           # experiment.annotator_error, checked for float32
  SeedBase(base: experiment.Base, eps [N], row: dict)          # what every size of one seed shares
  seed_base(cfg, seed) -> SeedBase                             # pi0, its tree and gold, eps, the "base" row
  one_size(cfg, sb, seed, size (layers, width, heads)) -> (rows, cells)
                                                               # one proxy a data size: "proxy", "lab", "fit",
                                                               # "peak" rows; cells for scaling.summarise/trends
  units(seeds, num_sizes) -> [(seed, size index)]              # the run's units, in its order
  make_unit(cfg, sizes) -> unit((seed, j)) -> (rows, cells)    # one unit; rows lead with the seed's base row
                                                               # at j = 0

Glossary: N terminal sequences.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import numpy as np

from goodhart_jax.lab import experiment, rewards, scaling
from goodhart_jax.lab import tree as lab_tree

__all__ = ["annotator_error", "SeedBase", "seed_base", "one_size", "units", "make_unit"]


def annotator_error(cfg, key: jax.Array, n: int, tree: lab_tree.LMTree | None = None) -> jax.Array:
    """The annotator error of a seed: `experiment.annotator_error` (cfg.noise_scale x cfg.noise, i.i.d. or
    through cfg.error_map, which needs pi0's `tree`), checked against what the float32 lab carries
    (`experiment.check_error` at cfg.betas and cfg.rl_betas).

    Args:
      cfg: the study's settings (the module docstring's fields).
      key: the seed's error key (`seed_base` folds 1 into the seed's key).
      n: N, the tree's sequences.
      tree: pi0's LMTree of N sequences; needed by an error map other than "iid".
    Returns:
      [N] eps.
    Raises:
      ValueError: eps beyond the float32 lab, naming noise_scale, noise and error_map.
    """
    eps = experiment.annotator_error(key, cfg.noise, n, cfg.noise_scale, cfg.error_map, tree)
    try:
        experiment.check_error(eps, cfg.betas + cfg.rl_betas)
    except ValueError as e:
        raise ValueError(f"noise_scale {cfg.noise_scale:g}, noise {cfg.noise}, error_map {cfg.error_map}: "
                         f"{e}") from None
    return eps


class SeedBase(NamedTuple):
    """What every size of one seed shares: pi0's tree and gold (`experiment.build_base`), eps, the base row."""

    base: experiment.Base
    eps: jax.Array  # [N] the annotator error, in gold's dtype
    row: dict  # the seed's "base" row: pi0's law (N, entropy, perplexity, top_mass, n90)


def seed_base(cfg, seed: int) -> SeedBase:
    """pi0, its tree, gold and eps of one seed: the same in every process (keys folded from the seed).

    Args:
      cfg: the study's settings (the module docstring's fields).
      seed: the seed; pi0 and gold from key(seed) folded with 0, eps with 1.
    Returns:
      SeedBase.
    Raises:
      ValueError: eps beyond the float32 lab (`annotator_error`).
    """
    key = jax.random.key(seed)
    base = experiment.build_base(jax.random.fold_in(key, 0), cfg.vocab, cfg.depth, lm_steps=cfg.lm_steps,
                                 sharpness=cfg.sharpness, eos_bias=cfg.eos_bias)
    n = base.tree.log_p.shape[0]
    eps = annotator_error(cfg, jax.random.fold_in(key, 1), n, base.tree).astype(base.gold.reward.dtype)
    law = lab_tree.law_stats(base.tree.log_p)
    return SeedBase(base, eps, dict(kind="base", seed=seed, N=law.num, entropy=law.entropy,
                                    perplexity=law.perplexity, top_mass=law.top_mass, n90=law.n90))


def one_size(cfg, sb: SeedBase, seed: int, size: tuple[int, int, int]) -> tuple[list[dict], list[dict]]:
    """One size's proxies of one seed, one per cfg.pairs value (`scaling.train_members`: from cfg.pretrain steps
    of `scaling.pretrained_init` if > 0; early-stopped on validation pairs with cfg.stop "val"), each measured
    (`scaling.evaluate`, with RL at cfg.rl_betas).

    Keys: key(seed) folded with 2 (training), 3 (evaluation), 4 (pretraining).

    Args:
      cfg: the study's settings (the module docstring's fields).
      sb: the seed's `seed_base`.
      seed: the seed.
      size: (layers, width, heads) of the proxies.
    Returns:
      (rows, cells): per data size a "proxy" row (its training: pretrain, stop, stop_step, val_pairs, losses;
      `scaling.evaluate`'s proxy fields) and its "lab", "fit" and "peak" rows; cells are {"seed", "size",
      "params", "pairs", "error_map", "evaluated", "stop_step"} (`scaling.summarise`, `scaling.trends`).
    Raises:
      ValueError: with stop "val", a tree so small that some member's pairs cover every sequence (naming stop
        and pairs).
    """
    key, (layers, width, heads) = jax.random.key(seed), size
    mcfg = scaling.size_config(cfg.vocab, cfg.depth, layers, width, heads)
    name, params = f"{layers}x{width}x{heads}", scaling.num_params(mcfg)
    init = None if not cfg.pretrain else scaling.pretrained_init(jax.random.fold_in(key, 4), mcfg,
                                                                  sb.base.source, cfg.pretrain)
    try:
        members, data = scaling.train_members(jax.random.fold_in(key, 2), mcfg, sb.base.tree,
                                              sb.base.gold.reward + sb.eps, cfg.pairs, cfg.bt_steps, lr=cfg.lr,
                                              val_frac=cfg.val_frac if cfg.stop == "val" else None,
                                              every=cfg.val_every, init=init)
    except ValueError as e:  # a tree so small that some member's pairs cover every sequence
        raise ValueError(f"stop val with pairs {max(cfg.pairs)}: {e}; use stop steps or fewer "
                         "comparisons") from None
    rows, cells = [], []
    for i, p in enumerate(cfg.pairs):
        val = None if members.val is None else jax.tree.map(lambda x: x[i, :int(members.val_pairs[i])], members.val)
        ev = scaling.evaluate(jax.random.fold_in(key, 3), members.raw[i], p, data, sb.base, sb.eps, cfg.betas,
                              cfg.ns, val=val, rl_betas=cfg.rl_betas, rl_steps=cfg.rl_steps,
                              eval_every=cfg.eval_every)
        tag = dict(seed=seed, size=name, params=params, pairs=p, error_map=cfg.error_map)
        stop = int(members.stop[i])
        fit = dict(pretrain=cfg.pretrain, stop=cfg.stop, stop_step=stop, val_pairs=int(members.val_pairs[i]),
                   final_loss=float(np.mean(members.loss[i, -50:])),
                   train_loss_at_stop=float(np.mean(members.loss[i, max(0, stop - 50):stop])) if stop else None)
        if val is not None:
            marks = rewards.checkpoints(cfg.bt_steps, cfg.val_every)
            fit["val_loss"] = float(members.val_loss[i][marks.index(stop)]) if stop else None
            fit["val_loss_last"] = float(members.val_loss[i][-1])
        row = dict(kind="proxy", **tag, **fit, **ev.proxy)
        if stop == 0:  # nothing finite to choose from: say why the stop fields are null
            why = "stop_step 0: no checkpoint had a finite validation loss (the initial parameters are kept)"
            row["reason"] = "; ".join(filter(None, [row.get("reason"), why]))
        rows += ([row]
                 + [dict(kind="lab", **tag, **pt) for pt in ev.points]
                 + [dict(kind="fit", **tag, **f) for f in ev.fits]
                 + [dict(kind="peak", **tag, **pk) for pk in ev.peaks])
        cells.append(dict(tag, evaluated=ev, stop_step=stop))
    return rows, cells


def units(seeds, num_sizes: int) -> list[tuple[int, int]]:
    """The run's units, seed by seed: [(seed, j) for each seed for j < num_sizes].

    Args:
      seeds: the run's seeds, in order.
      num_sizes: how many proxy sizes.
    Returns:
      [len(seeds) x num_sizes] (seed, size index) pairs.
    """
    return [(seed, j) for seed in seeds for j in range(num_sizes)]


def make_unit(cfg, sizes) -> Callable[[tuple[int, int]], tuple[list[dict], list[dict]]]:
    """unit((seed, j)) -> `one_size`'s (rows, cells) for sizes[j], the rows led by the seed's base row where j is 0.

    The seed's `seed_base` is kept from one unit to the next of the same seed (one seed's at a time: units come
    seed by seed, `units`); a unit's result does not depend on which units ran before it.

    Args:
      cfg: the study's settings (the module docstring's fields).
      sizes: [(layers, width, heads)] of the proxies.
    Returns:
      unit: (seed, size index) -> (rows, cells).
    """
    held: dict[int, SeedBase] = {}

    def unit(u: tuple[int, int]) -> tuple[list[dict], list[dict]]:
        seed, j = u
        if seed not in held:
            held.clear()
            held[seed] = seed_base(cfg, seed)
        sb = held[seed]
        rows, cells = one_size(cfg, sb, seed, sizes[j])
        return ([sb.row] + rows if j == 0 else rows), cells

    return unit
