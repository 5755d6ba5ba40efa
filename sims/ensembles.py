"""Reward-model ensembles on the lab's exact tree (Coste et al. 2024): mean, worst-case (wco) and
uncertainty-weighted (uwo) objectives of K proxies against a single proxy, each optimised exactly.

Per seed: pi0 (the lab LM), its enumerated tree and a gold reward (`lab.experiment.build_base`); per annotator
error family (--noise) and label kind (--losses: "bt" Bradley-Terry comparisons, "mse" the regression control on
ratings), K members (own initialisation, minibatches and bootstrap resample of the labels) and a single proxy on
the labels as drawn (`lab.ensembles.train_ensemble`). Each objective and the single proxy is optimised exactly:
pi*(beta) over --betas, best-of-n over --ns, pi* at KL = 1, 2, 4 nats (and RL with --rl-betas). Headline rows
per seed (`lab.summary.headlines`: peak gold, KL at the peak, gold at each KL), the paired differences against
the single proxy of the same labels (quantity "<q>_minus"), and summary rows: mean and 95% interval over seeds.

    python sims/ensembles.py                      # defaults: A=8, L=4 (2,801 sequences), 3 seeds, K = 5
    python sims/ensembles.py --noise student_t:df=2 --losses bt --seeds 5 --json
"""
from __future__ import annotations

from goodhart_jax import cli  # first: Ctrl-C during the slow imports below is one line, exit 130
cli.guard_startup(__name__)

import dataclasses
import math

import jax
import numpy as np

from goodhart_jax import io, planning, tails
from goodhart_jax.cli import lab_flags
from goodhart_jax.lab import ensembles, error_maps, experiment, rewards, summary
from goodhart_jax.lab import tree as lab_tree

NUMBERS = ("KL", "d", "gold", "proxy_reward", "objective", "KL_bound", "optimum", "gap", "share_closed")


@dataclasses.dataclass(frozen=True)
class Config(lab_flags.LabRLConfig):
    vocab: int = lab_flags.vocab(8)
    noise: tuple[str, ...] = cli.arg(("normal", "student_t:df=2"), "annotator error families", metavar="FAMILY")
    losses: tuple[str, ...] = cli.arg(("bt", "mse"), "label kinds: bt (comparisons) and/or mse (ratings, the "
                                      "regression control)", choices=ensembles.LOSSES)
    members: int = cli.arg(ensembles.MEMBERS, "ensemble members K", metavar="K", check=cli.count("--members", 64, "64"))
    labels: int = cli.arg(4000, "labels per ensemble: comparisons (bt) or ratings (mse)", metavar="P",
                          check=cli.count("--labels"))
    bootstrap: bool = cli.arg(True, "each member trains on a bootstrap resample of the labels (--no-bootstrap: "
                              "all of them, members differing by initialisation only, as Coste et al.)")
    uwo_lambda: float = cli.arg(ensembles.UWO_LAMBDA, "lambda of uwo = mean - lambda Var over members (members "
                                "in sd units under pi0)", metavar="L",
                                check=cli.each("--uwo-lambda", lambda x: math.isfinite(x) and 0 <= x <= 1e6,
                                               "in [0, 1e6]"))
    rl_betas: tuple[float, ...] = lab_flags.rl_betas((), "KL coefficients of RL on every objective (none: no RL)")
    bt_steps: int = cli.arg(600, "training steps of each proxy", metavar="S", check=cli.count("--bt-steps"))

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """(objective, its label) of every ensemble objective."""
        return [(o, ensembles.objective_name(o, self.uwo_lambda)) for o in ensembles.OBJECTIVES]


def error_key(seed: int, i: int):
    """The key of the annotator error of the i-th --noise family in a seed (the keys of sims/overoptimization)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), i)


def annotator_error(cfg: Config, key, noise: str, n: int, base=None):
    """The annotator error eps [N] of one family: the one place where the misspecification is made
    (`lab.experiment.annotator_error`: scale x a `tails` family, i.i.d. or through --error-map, which needs pi0's
    tree: `base`); it reaches every proxy through `lab.ensembles.train_ensemble`'s `error`.

    Raises:
      cli.InputError: eps beyond what the float32 lab carries (`experiment.check_error`), naming the flags.
    """
    tree = None if base is None else base.tree
    eps = experiment.annotator_error(key, noise, n, cfg.noise_scale, cfg.error_map, tree)
    try:
        experiment.check_error(eps, cfg.betas + cfg.rl_betas)
    except ValueError as e:
        raise cli.InputError(f"--noise-scale {cfg.noise_scale:g}, --noise {noise}, --error-map {cfg.error_map}: "
                             f"{e}") from None
    return eps


def prepare(cfg: Config) -> int:
    """Every input checked before anything is written: families, betas, the tree's size, memory, the error."""
    with cli.inputs({"error map": "--error-map"}):
        for s in cfg.noise:
            tails.parse(s)
        planning.check_float32(cfg.betas + cfg.rl_betas, [])
        error_maps.check(cfg.error_map, cfg.vocab)
    n = experiment.check_size(cfg.vocab, cfg.depth)
    est = lambda steps: experiment.peak_bytes(cfg.vocab, cfg.depth, ns=len(cfg.ns), pairs=cfg.labels,  # noqa: E731
                                              lm_steps=cfg.lm_steps, bt_steps=steps, rl=bool(cfg.rl_betas),
                                              rl_steps=cfg.rl_steps)
    # K + 1 proxies train at once (vmapped): K more times what one proxy's training adds, and K + 1 tables
    one = max(est(cfg.bt_steps) - est(0), 0.0)
    cli.check_memory(est(cfg.bt_steps) + cfg.members * one + (cfg.members + 1) * 16 * n,
                     f"the lab's tree of {n:,} sequences (A={cfg.vocab}, L={cfg.depth}), {cfg.members + 1} proxies")
    for seed in cfg.seed_values if error_maps.is_iid(cfg.error_map) else ():  # other maps need the tree
        for i, noise in enumerate(cfg.noise):
            annotator_error(cfg, error_key(seed, i), noise, n)
    return n


def proxy_row(tag: dict, px: rewards.Proxy, gold, log_p, members=None) -> dict:
    """A "proxy" row: corr(proxy, gold) under pi0 and, for an ensemble, the members' mean pairwise corr."""
    row = dict(kind="proxy", **tag, corr=float(rewards.pi0_corr(px.reward, gold, log_p)))
    if members is not None and members.shape[0] > 1:
        k = members.shape[0]
        cs = [float(rewards.pi0_corr(members[i], members[j], log_p)) for i in range(k) for j in range(i + 1, k)]
        row["member_corr"] = float(np.mean(cs))
    return io.null_nonfinite(row, [f for f in ("corr", "member_corr") if f in row])


def one_seed(run: cli.Run, cfg: Config, n: int, seed: int) -> list[dict]:
    """Every row of one seed; returns its headline and paired rows."""
    key = jax.random.key(seed)
    first = len(run.rows)
    base = experiment.build_base(jax.random.fold_in(key, 0), cfg.vocab, cfg.depth, lm_steps=cfg.lm_steps,
                                 sharpness=cfg.sharpness, eos_bias=cfg.eos_bias)
    law = lab_tree.law_stats(base.tree.log_p)
    run.emit([dict(kind="base", seed=seed, N=law.num, entropy=law.entropy, perplexity=law.perplexity,
                   top_mass=law.top_mass, n90=law.n90)])
    gold, log_p = base.gold.reward, base.tree.log_p
    pcfg = rewards.proxy_config(cfg.vocab, cfg.depth)
    at_kl, refs = [], []
    jobs = [(i, noise, loss) for i, noise in enumerate(cfg.noise) for loss in cfg.losses]
    for i, noise, loss in run.progress(jobs, f"seed {seed}: ensembles"):
        eps = annotator_error(cfg, error_key(seed, i), noise, n, base)
        ens = ensembles.train_ensemble(jax.random.fold_in(error_key(seed, i), 10 + cfg.losses.index(loss)), pcfg,
                                       base.tree, gold, eps, cfg.labels, cfg.members, loss, cfg.bt_steps,
                                       cfg.bootstrap)
        refs.append(f"{loss}:single")
        proxies = [(f"{loss}:single", ens.single, None)]
        proxies += [(f"{loss}:{label}", ensembles.objective_proxy(ens, o, log_p, cfg.uwo_lambda), ens.members)
                    for o, label in cfg.objectives]
        for j, (label, px, members) in enumerate(proxies):
            tag = dict(seed=seed, noise=noise, proxy=label, pairs=cfg.labels, error_map=cfg.error_map)
            run.emit([proxy_row(tag, px, gold, log_p, members)])
            ev = ensembles.evaluate(base.tree, gold, px.reward, cfg.betas, cfg.ns, name=label)
            pts, at = ensembles.evaluation_rows(ev)
            tree = lab_tree.mdp_tree(base.tree, gold, px.reward)
            for b, beta in enumerate(cfg.rl_betas):
                k = jax.random.fold_in(jax.random.fold_in(error_key(seed, i), 100 + j), b)
                pts += experiment.rl_points(k, base, tree, beta, cfg.rl_steps, cfg.eval_every)
            pts = [io.null_nonfinite(p, [f for f in NUMBERS if f in p]) for p in pts]
            run.emit([dict(kind="lab", **tag, **p) for p in pts])
            at_kl += [dict(kind="exact_at_kl", **tag, **r) for r in at]
    heads = summary.headlines(run.rows[first:] + at_kl, seed)
    for ref in dict.fromkeys(refs):
        loss = ref.split(":")[0]
        heads += ensembles.paired([h for h in heads if h["proxy"] is None or h["proxy"].startswith(loss + ":")],
                                  ref)
    run.emit(heads)
    return heads


QUANTITIES = (("peak_gold", None), ("KL_at_peak", None)) + tuple(("gold_at_KL", a) for a in summary.KL_TARGETS)


def table_rows(summ: list[dict]) -> list[dict]:
    """One row per (noise, proxy, method): each headline's mean [95% interval], and beside it the paired
    difference with the single proxy of the same labels."""
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


def main(cfg: Config) -> list[dict]:
    """Per seed (`one_seed`), then the summary over seeds (rows, summary.json), the figure and the table."""
    n = prepare(cfg)
    with cli.Run("ensembles", cfg) as run:
        run.log(f"ensembles: {cfg.seeds} seeds x {len(cfg.noise)} families x {len(cfg.losses)} label kinds, "
                f"K = {cfg.members} + 1 proxies each, on {n:,} sequences; writing to {run.dir}")
        heads = []
        for seed in cfg.seed_values:
            heads += one_seed(run, cfg, n, seed)
        summ = summary.summarise(heads)
        run.emit(summ)
        run.save_json("summary.json", dict(seeds=cfg.seed_values, level=summary.LEVEL, rows=summ))
        if cfg.plots:
            from goodhart_jax.plots import ensembles as plots

            run.figure("ensembles.png", plots.gold_vs_kl(run.rows))
        over = f"mean [95% interval] over {cfg.seeds} seeds" if cfg.seeds > 1 else "one seed: no interval"
        cols = [("noise", "noise", ""), ("proxy", "proxy", ""), ("method", "method", "")]
        cols += [(q if at is None else f"gold at KL {at:g}", q if at is None else f"{q}{at:g}", "")
                 for q, at in QUANTITIES]
        run.table(table_rows(summ), cols, title=f"gold (sd units under pi0), {over}; after '|': minus the single "
                  "proxy of the same labels, paired by seed (exact: pi* at the KL; bon/rl: interpolated in KL):")
    return run.rows


if __name__ == "__main__":
    cli.main(Config, main)
