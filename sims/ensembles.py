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

from goodhart_jax import planning, tails
from goodhart_jax.cli import lab_flags
from goodhart_jax.lab import ensemble_study, ensembles, error_maps, experiment, summary

# The library's names for what the flags set (`lab.ensemble_study` names cfg's fields in its errors).
FLAGS = {"noise_scale": "--noise-scale", "noise": "--noise", "error_map": "--error-map", "error map": "--error-map"}


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


def prepare(cfg: Config) -> int:
    """Every input checked before anything is written: families, betas, the tree's size, memory, the error."""
    with cli.inputs(FLAGS):
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
    with cli.inputs(FLAGS):
        for seed in cfg.seed_values if error_maps.is_iid(cfg.error_map) else ():  # other maps need the tree
            for i, noise in enumerate(cfg.noise):
                ensemble_study.annotator_error(cfg, ensemble_study.error_key(seed, i), noise, n)
    return n


def main(cfg: Config) -> list[dict]:
    """Per seed (`lab.ensemble_study.seed_rows`), then the summary over seeds (rows, summary.json), the figure and
    the table (`lab.ensemble_study.table_rows`)."""
    n = prepare(cfg)
    with cli.Run("ensembles", cfg) as run:
        run.log(f"ensembles: {cfg.seeds} seeds x {len(cfg.noise)} families x {len(cfg.losses)} label kinds, "
                f"K = {cfg.members} + 1 proxies each, on {n:,} sequences; writing to {run.dir}")
        heads = []
        for seed in cfg.seed_values:
            with cli.inputs(FLAGS):
                heads += ensemble_study.seed_rows(cfg, seed, run.emit, run.progress)
        summ = summary.summarise(heads)
        run.emit(summ)
        run.save_json("summary.json", dict(seeds=cfg.seed_values, level=summary.LEVEL, rows=summ))
        if cfg.plots:
            from goodhart_jax.plots import ensembles as plots

            run.figure("ensembles.png", plots.gold_vs_kl(run.rows))
        over = f"mean [95% interval] over {cfg.seeds} seeds" if cfg.seeds > 1 else "one seed: no interval"
        cols = [("noise", "noise", ""), ("proxy", "proxy", ""), ("method", "method", "")]
        cols += [(q if at is None else f"gold at KL {at:g}", q if at is None else f"{q}{at:g}", "")
                 for q, at in ensemble_study.QUANTITIES]
        run.table(ensemble_study.table_rows(summ), cols,
                  title=f"gold (sd units under pi0), {over}; after '|': minus the single proxy of the same labels, "
                  "paired by seed (exact: pi* at the KL; bon/rl: interpolated in KL):")
    return run.rows


if __name__ == "__main__":
    cli.main(Config, main)
