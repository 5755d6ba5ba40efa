"""The reward-model ensembles study's seeds (sims/ensembles.py): per annotator error family and label kind, K
members and a single proxy, each ensemble objective and the single proxy optimised exactly, as rows; the table.

One seed (`seed_rows`): pi0, its tree and gold (`experiment.build_base`); for each family (cfg.noise) and label
kind (cfg.losses) the annotator error (`annotator_error`, keyed by `error_key`), the ensemble
(`ensembles.train_ensemble`), a "proxy" row (`proxy_row`) and exact "lab" rows for the single proxy and each
objective (`ensembles.evaluate`, RL at cfg.rl_betas); then the seed's headlines (`summary.headlines`) and their
paired differences against the single proxy of the same labels (`ensembles.paired`).

The study's settings come in one object, `cfg`, read by field (sims/ensembles.py's `Config`, a
`cli.lab_flags.LabRLConfig` subclass, or any object with the fields): vocab, depth, lm_steps, sharpness,
eos_bias (pi0); noise (families), noise_scale, error_map (the annotator error); losses, labels, members,
bt_steps, bootstrap, uwo_lambda (the ensembles); betas, ns, rl_betas, rl_steps, eval_every (the methods). A
value this module cannot use raises ValueError naming those fields (a driver reads them as its flags:
`cli.inputs`).

Public API:
  NUMBERS                                                    # a "lab" row's numeric fields (null if not finite)
  error_key(seed, i) -> key                                  # the annotator error key of the i-th family
  annotator_error(cfg, key, noise, n, base=None) -> eps [N]  # experiment.annotator_error, checked for float32
  proxy_row(tag, px, gold [N], log_p [N], members=None [K, N]) -> "proxy" row   # corr with gold; members' corr
  seed_rows(cfg, seed, emit, progress=None) -> headline and paired rows      # every row of one seed, to emit
  QUANTITIES                                                 # (quantity, at) of the table's columns
  table_rows(summary_rows) -> rows                           # mean [interval] | paired difference, per column

Glossary: N terminal sequences, K members.
"""
from __future__ import annotations

from typing import Callable, Iterable

import jax
import numpy as np

from goodhart_jax import io
from goodhart_jax.lab import ensembles, experiment, rewards, summary
from goodhart_jax.lab import tree as lab_tree

__all__ = ["NUMBERS", "error_key", "annotator_error", "proxy_row", "seed_rows", "QUANTITIES", "table_rows"]

NUMBERS = ("KL", "d", "gold", "proxy_reward", "objective", "KL_bound", "optimum", "gap", "share_closed")
QUANTITIES = (("peak_gold", None), ("KL_at_peak", None)) + tuple(("gold_at_KL", a) for a in summary.KL_TARGETS)


def error_key(seed: int, i: int) -> jax.Array:
    """The key of the annotator error of the i-th family (cfg.noise) in a seed (the keys of sims/overoptimization).

    Args:
      seed: the seed.
      i: the family's index.
    Returns:
      key(seed) folded with 1, then with i.
    """
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), i)


def annotator_error(cfg, key: jax.Array, noise: str, n: int, base: experiment.Base | None = None) -> jax.Array:
    """The annotator error eps [N] of one family: the one place where the misspecification is made
    (`experiment.annotator_error`: cfg.noise_scale x a `tails` family, i.i.d. or through cfg.error_map, which
    needs pi0's tree: `base`); it reaches every proxy through `ensembles.train_ensemble`'s `error`.

    Args:
      cfg: the study's settings (the module docstring's fields).
      key: the family's key (`error_key`).
      noise: the family (a `tails` spec).
      n: N, the tree's sequences.
      base: pi0's `experiment.Base`; needed by an error map other than "iid".
    Returns:
      [N] eps.
    Raises:
      ValueError: eps beyond what the float32 lab carries (`experiment.check_error` at cfg.betas and
        cfg.rl_betas), naming noise_scale, noise and error_map.
    """
    tree = None if base is None else base.tree
    eps = experiment.annotator_error(key, noise, n, cfg.noise_scale, cfg.error_map, tree)
    try:
        experiment.check_error(eps, cfg.betas + cfg.rl_betas)
    except ValueError as e:
        raise ValueError(f"noise_scale {cfg.noise_scale:g}, noise {noise}, error_map {cfg.error_map}: {e}") from None
    return eps


def proxy_row(tag: dict, px: rewards.Proxy, gold: jax.Array, log_p: jax.Array, members: jax.Array | None = None
              ) -> dict:
    """A "proxy" row: corr(proxy, gold) under pi0 and, for an ensemble, the members' mean pairwise corr.

    Args:
      tag: the row's identifying fields (seed, noise, proxy, ...).
      px: the proxy (its reward [N]).
      gold: [N] gold reward.
      log_p: [N] log pi0 of each sequence.
      members: [K, N] the members' rewards (None: a single proxy; no member_corr where K < 2).
    Returns:
      {"kind": "proxy", **tag, "corr", "member_corr"?}, non-finite numbers null with a reason.
    """
    row = dict(kind="proxy", **tag, corr=float(rewards.pi0_corr(px.reward, gold, log_p)))
    if members is not None and members.shape[0] > 1:
        k = members.shape[0]
        cs = [float(rewards.pi0_corr(members[i], members[j], log_p)) for i in range(k) for j in range(i + 1, k)]
        row["member_corr"] = float(np.mean(cs))
    return io.null_nonfinite(row, [f for f in ("corr", "member_corr") if f in row])


def seed_rows(cfg, seed: int, emit: Callable[[list[dict]], None],
              progress: Callable[[Iterable, str], Iterable] | None = None) -> list[dict]:
    """Every row of one seed, each batch passed to `emit` as it is made: the "base" row (pi0's law); per (family,
    label kind) and per proxy (the single proxy, then each objective of `ensembles.OBJECTIVES`) a "proxy" row
    and its "lab" rows (exact pi*(beta), best-of-n, RL); last the headline and paired rows.

    Keys: pi0 and gold from key(seed) folded with 0; family i's error from `error_key(seed, i)`, its ensemble of
    label kind l from that folded with 10 + l, RL of proxy j at rl_betas[b] from it folded with 100 + j, then b.

    Args:
      cfg: the study's settings (the module docstring's fields).
      seed: the seed.
      emit: called with each list of rows, in order, as `io.json_safe` makes them (a run's `emit`).
      progress: (iterable, description) -> iterable over the (family, label kind) jobs (a progress bar);
        None: none.
    Returns:
      the seed's headline rows (`summary.headlines`) and paired rows (`ensembles.paired`), also emitted.
    Raises:
      ValueError: an annotator error beyond the float32 lab (`annotator_error`).
    """
    key = jax.random.key(seed)
    base = experiment.build_base(jax.random.fold_in(key, 0), cfg.vocab, cfg.depth, lm_steps=cfg.lm_steps,
                                 sharpness=cfg.sharpness, eos_bias=cfg.eos_bias)
    rows = []  # the seed's rows as written (`io.json_safe`): the headlines are read from them

    def put(batch: list[dict]) -> None:
        batch = [io.json_safe(r) for r in batch]
        rows.extend(batch)
        emit(batch)

    law = lab_tree.law_stats(base.tree.log_p)
    put([dict(kind="base", seed=seed, N=law.num, entropy=law.entropy, perplexity=law.perplexity,
              top_mass=law.top_mass, n90=law.n90)])
    gold, log_p = base.gold.reward, base.tree.log_p
    n = log_p.shape[0]
    pcfg = rewards.proxy_config(cfg.vocab, cfg.depth)
    objectives = [(o, ensembles.objective_name(o, cfg.uwo_lambda)) for o in ensembles.OBJECTIVES]
    at_kl, refs = [], []
    jobs = [(i, noise, loss) for i, noise in enumerate(cfg.noise) for loss in cfg.losses]
    for i, noise, loss in (jobs if progress is None else progress(jobs, f"seed {seed}: ensembles")):
        eps = annotator_error(cfg, error_key(seed, i), noise, n, base)
        ens = ensembles.train_ensemble(jax.random.fold_in(error_key(seed, i), 10 + cfg.losses.index(loss)), pcfg,
                                       base.tree, gold, eps, cfg.labels, cfg.members, loss, cfg.bt_steps,
                                       cfg.bootstrap)
        refs.append(f"{loss}:single")
        proxies = [(f"{loss}:single", ens.single, None)]
        proxies += [(f"{loss}:{label}", ensembles.objective_proxy(ens, o, log_p, cfg.uwo_lambda), ens.members)
                    for o, label in objectives]
        for j, (label, px, members) in enumerate(proxies):
            tag = dict(seed=seed, noise=noise, proxy=label, pairs=cfg.labels, error_map=cfg.error_map)
            put([proxy_row(tag, px, gold, log_p, members)])
            ev = ensembles.evaluate(base.tree, gold, px.reward, cfg.betas, cfg.ns, name=label)
            pts, at = ensembles.evaluation_rows(ev)
            tree = lab_tree.mdp_tree(base.tree, gold, px.reward)
            for b, beta in enumerate(cfg.rl_betas):
                k = jax.random.fold_in(jax.random.fold_in(error_key(seed, i), 100 + j), b)
                pts += experiment.rl_points(k, base, tree, beta, cfg.rl_steps, cfg.eval_every)
            pts = [io.null_nonfinite(p, [f for f in NUMBERS if f in p]) for p in pts]
            put([dict(kind="lab", **tag, **p) for p in pts])
            at_kl += [dict(kind="exact_at_kl", **tag, **r) for r in at]
    heads = summary.headlines(rows + at_kl, seed)
    for ref in dict.fromkeys(refs):
        loss = ref.split(":")[0]
        heads += ensembles.paired([h for h in heads if h["proxy"] is None or h["proxy"].startswith(loss + ":")],
                                  ref)
    emit(heads)
    return heads


def table_rows(summ: list[dict]) -> list[dict]:
    """One row per (noise, proxy, method): each headline's mean [95% interval], and beside it the paired
    difference with the single proxy of the same labels.

    Args:
      summ: the "summary" rows over seeds (`summary.summarise` of `seed_rows`' headline and paired rows).
    Returns:
      rows of {"noise", "proxy", "method", one column a `QUANTITIES` entry ("peak_gold", "KL_at_peak",
      "gold_at_KL1", ...)}: "mean [lo, hi]", after " | " the paired difference (not for the single proxy).
    """
    by = {(r["noise"], r["proxy"], r["method"], r["beta"], r["quantity"], r["at"]): r for r in summ}
    out = []
    keys = dict.fromkeys((r["noise"], r["proxy"], r["method"], r["beta"]) for r in summ
                         if r["method"] in ("exact", "bon", "rl") and r["quantity"] == "peak_gold")
    for noise, proxy, method, beta in keys:
        row = dict(noise=noise, proxy=proxy, method=method + ("" if beta is None else f" beta {beta:g}"))
        for q, at in QUANTITIES:
            name = q if at is None else f"{q}{at:g}"
            row[name] = summary.cell(by.get((noise, proxy, method, beta, q, at)), ".2f")
            if not proxy.endswith(":single"):
                row[name] += " | " + summary.cell(by.get((noise, proxy, method, beta, q + "_minus", at)), "+.2f")
        out.append(row)
    return out
